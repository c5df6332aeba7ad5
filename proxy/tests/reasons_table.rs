//! README.md's table of gateway refusal reasons and `enforce::Reason` name the same reasons:
//! a variant without a row fails here, as does a row for a reason that is gone.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use tollgate::enforce::Reason;

/// The first column of every row between the README's `gateway-reasons` markers.
fn readme_reasons() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("<!-- gateway-reasons -->").unwrap();
    let end = readme.find("<!-- /gateway-reasons -->").unwrap();
    readme[start..end]
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|rest| rest.split('`').next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_reason_is_in_the_readme_and_every_row_is_a_reason() {
    let variants: BTreeSet<String> = Reason::ALL.iter().map(|r| r.as_str().to_owned()).collect();
    assert_eq!(variants.len(), Reason::ALL.len(), "reasons are distinct");
    let readme = readme_reasons();
    let missing: Vec<_> = variants.difference(&readme).collect();
    let stale: Vec<_> = readme.difference(&variants).collect();
    assert!(
        missing.is_empty(),
        "reasons missing from the README: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "README rows that are no reason: {stale:?}"
    );
}
