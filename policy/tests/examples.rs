//! Every file in `examples/` must compile: they are documentation, and documentation that does
//! not parse teaches the wrong schema.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use tollgate_policy::{DEFAULT_POLICY_TOML, HostPattern, Phase, Policy};

#[test]
fn every_example_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Policy::load(&path) {
                panic!("example does not compile: {e}");
            }
            count += 1;
        }
    }
    assert!(count >= 4, "expected at least 4 examples, found {count}");
}

#[test]
fn default_example_is_the_embedded_policy() {
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/default.toml"),
    )
    .unwrap();
    assert_eq!(file, DEFAULT_POLICY_TOML);
    let p = Policy::embedded_default();
    assert_eq!(p.origin, "<embedded>");
    assert_eq!(p.phase, Phase::Agent);
    assert_eq!(
        p.intercept.0,
        vec![HostPattern::Exact("openrouter.ai".into())]
    );
    assert!(p.allow.is_empty() && p.deny.is_empty() && p.hosts.is_empty());
}

#[test]
fn examples_say_what_their_names_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let pypi = Policy::load(&dir.join("agent-with-pypi.toml")).unwrap();
    assert!(pypi.allow.find("files.pythonhosted.org").is_some());
    assert!(pypi.deny.find("upload.pythonhosted.org").is_some());

    let open = Policy::load(&dir.join("verification-open.toml")).unwrap();
    assert_eq!(open.phase, Phase::Verification);

    let pinned = Policy::load(&dir.join("pinned-test-hosts.toml")).unwrap();
    let rule = pinned.host_rule("a.test.example").unwrap();
    assert_eq!(rule.port, Some(8443));
    assert_eq!(
        pinned.host_rule("local.test").unwrap().allow_ranges.len(),
        2
    );
}
