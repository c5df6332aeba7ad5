//! README.md's reason tables and the enums name the same reasons (`enforce::Reason` for the
//! gateway's refusals, `route::Reason` for connections): a variant without a row fails here, as
//! does a row for a reason that is gone.
use std::collections::BTreeSet;

use tollgate::{ConnectionReason, RefusalReason as Reason};

/// The first column of every row between the README's `<!-- {table} -->` markers.
fn readme_reasons(table: &str) -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find(&format!("<!-- {table} -->")).unwrap();
    let end = readme.find(&format!("<!-- /{table} -->")).unwrap();
    readme[start..end]
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|rest| rest.split('`').next().unwrap().to_owned())
        .collect()
}

fn assert_same(variants: &[&str], readme: &BTreeSet<String>) {
    let listed = variants.len();
    let variants: BTreeSet<String> = variants.iter().map(|r| (*r).to_owned()).collect();
    assert_eq!(variants.len(), listed, "reasons are distinct");
    let missing: Vec<_> = variants.difference(readme).collect();
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

#[test]
fn every_refusal_reason_is_in_the_readme_and_every_row_is_one() {
    let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_same(&names, &readme_reasons("gateway-reasons"));
}

#[test]
fn every_connection_reason_is_in_the_readme_and_every_row_is_one() {
    let names: Vec<&str> = ConnectionReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_same(&names, &readme_reasons("connection-reasons"));
}
