//! Every file in `examples/` must compile: they are documentation, and documentation that does
//! not parse teaches the wrong schema.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use tollgate_policy::money::{Micros, UnitPrice};

use tollgate_policy::{
    DEFAULT_POLICY_TOML, GatewaySettings, HostPattern, ModelPattern, Phase, Policy, Price,
    ProviderOverride,
};

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
    assert!(pinned.host_rule("ech.test.example").unwrap().ech);
    assert!(!pinned.host_rule("pypi.org").unwrap().ech);
}

#[test]
fn gateway_example_shows_the_defaults_except_where_it_says_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let example = Policy::load(&dir.join("gateway.toml")).unwrap();
    let mut expected = GatewaySettings::default();
    // The lines marked "example".
    expected.budget.max_cost_micros = Some(Micros(5_000_000));
    expected.models.deny = vec![ModelPattern::parse("openai/o1-pro*").unwrap()];
    expected.provider.per_model.insert(
        "anthropic/claude-sonnet-4".into(),
        ProviderOverride {
            order: Some(vec!["anthropic".into()]),
            allow_fallbacks: Some(false),
        },
    );
    expected.pricing.models.insert(
        "openai/gpt-4o".into(),
        Price {
            prompt: UnitPrice(2_500_000),
            completion: UnitPrice(10_000_000),
            request: UnitPrice(0),
            image: UnitPrice(3_613_000_000),
            reasoning: UnitPrice(0),
        },
    );
    assert_eq!(example.gateway, expected);
    // The built-in policy takes every gateway default; without MAX_COST_USD it spends nothing.
    assert_eq!(
        Policy::embedded_default().gateway,
        GatewaySettings::default()
    );
}
