//! The reference sidecar's environment variables over a policy (`Policy::apply_env`), through a
//! closure so no process environment is touched.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use tollgate_policy::money::Micros;
use tollgate_policy::{ENV_VARS, KeySource, ModelDenied, Policy, PolicyError};

const FILE: &str = r#"version = 1
[intercept]
hosts = ["openrouter.ai"]
[intercept.models]
deny = ["anthropic/*"]
[intercept.provider]
order = ["openai"]
allow_fallbacks = true
[intercept.provider.models."openai/gpt-4o"]
order = ["azure"]
[intercept.budget]
max_cost_usd = "1"
evaluation_run_id = "from-file"
[intercept.workspace]
management_key_file = "/run/secrets/mgmt"
"#;

fn policy() -> Policy {
    Policy::parse(FILE, "policy.toml").unwrap()
}

fn apply(vars: &[(&str, &str)]) -> Result<Policy, PolicyError> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut p = policy();
    p.apply_env(&|name| env.get(name).cloned())?;
    Ok(p)
}

#[test]
fn no_variables_change_nothing() {
    let p = apply(&[]).unwrap();
    assert_eq!(p.gateway, policy().gateway);
    assert!(p.gateway.env_overrides.is_empty());
    // Empty and blank values count as unset.
    let blank: Vec<(&str, &str)> = ENV_VARS.iter().map(|n| (*n, "  ")).collect();
    assert_eq!(apply(&blank).unwrap().gateway, policy().gateway);
}

#[test]
fn max_cost_usd_replaces_the_budget_exactly() {
    let g = apply(&[("MAX_COST_USD", " 2.50 ")]).unwrap().gateway;
    assert_eq!(g.budget.max_cost_micros, Some(Micros(2_500_000)));
    assert_eq!(g.env_overrides, ["MAX_COST_USD"]);
    assert_eq!(
        apply(&[("MAX_COST_USD", "0")])
            .unwrap()
            .gateway
            .budget
            .max_cost_micros,
        Some(Micros(0))
    );
}

#[test]
fn evaluation_run_id_replaces_the_files() {
    let g = apply(&[("EVALUATION_RUN_ID", "run-42")]).unwrap().gateway;
    assert_eq!(g.budget.evaluation_run_id, "run-42");
}

#[test]
fn restricted_models_are_added_to_deny() {
    let g = apply(&[("RESTRICTED_MODELS", "openai/gpt-4o, google/*,,anthropic/*")])
        .unwrap()
        .gateway;
    let deny: Vec<String> = g.models.deny.iter().map(ToString::to_string).collect();
    assert_eq!(
        deny,
        ["anthropic/*", "openai/gpt-4o", "google/*"],
        "added, no repeats"
    );
    assert!(matches!(
        g.models.check("openai/gpt-4o"),
        Err(ModelDenied::Denied { .. })
    ));
    assert!(g.models.check("openai/gpt-4o:online").is_err());
    assert!(g.models.check("google/gemini-pro").is_err());
    assert!(
        g.models.check("anthropic/claude-3").is_err(),
        "the file's deny stays"
    );
    // `model` and `models` are both checked against the combined list.
    assert_eq!(
        g.models
            .check_all(["openai/gpt-4o-mini", "google/gemini-pro"])
            .unwrap_err()
            .model(),
        "google/gemini-pro"
    );
}

#[test]
fn provider_variables_replace_the_tables_values() {
    let g = apply(&[
        ("PROVIDER_ORDER", "anthropic, openai"),
        ("PROVIDER_ALLOW_FALLBACKS", "false"),
    ])
    .unwrap()
    .gateway;
    let prefs = g.provider.for_model("meta-llama/llama-3");
    assert_eq!(prefs.order, ["anthropic", "openai"]);
    assert!(!prefs.allow_fallbacks);
    // A model's own table still wins over the table-wide order.
    assert_eq!(g.provider.for_model("openai/gpt-4o").order, ["azure"]);
    for (word, value) in [("TRUE", true), ("1", true), ("False", false), ("0", false)] {
        let g = apply(&[("PROVIDER_ALLOW_FALLBACKS", word)])
            .unwrap()
            .gateway;
        assert_eq!(g.provider.allow_fallbacks, value, "{word}");
    }
}

#[test]
fn workspace_variables_turn_the_check_on() {
    let g = apply(&[
        ("OPENROUTER_WORKSPACE_ID", "ws_abc"),
        ("OPENROUTER_MANAGEMENT_KEY", "sk-or-secret"),
    ])
    .unwrap()
    .gateway;
    assert_eq!(g.workspace.enabled(), Some("ws_abc"));
    assert_eq!(
        g.workspace.management_key,
        KeySource::Env("OPENROUTER_MANAGEMENT_KEY".into()),
        "the variable's presence replaces the file source; its value is not kept"
    );
    assert!(!format!("{g:?}").contains("sk-or-secret"));
    // Without the key variable, the file's source stays.
    let g = apply(&[("OPENROUTER_WORKSPACE_ID", "ws_abc")])
        .unwrap()
        .gateway;
    assert_eq!(
        g.workspace.management_key.to_string(),
        "file /run/secrets/mgmt"
    );
}

#[test]
fn key_pin_upstream_and_data_dir() {
    let g = apply(&[
        ("OPENROUTER_EXPECTED_API_KEY_SHA256", &"0F".repeat(32)),
        ("UPSTREAM_BASE_URL", "https://fake.test:9443/api/v1"),
        ("PROXY_DATA_DIR", "/tmp/usage"),
    ])
    .unwrap()
    .gateway;
    assert_eq!(g.auth.api_key_sha256, Some([0x0f; 32]));
    assert_eq!(g.upstream.to_string(), "https://fake.test:9443");
    assert_eq!(g.budget.data_dir, PathBuf::from("/tmp/usage"));
    assert_eq!(
        g.env_overrides,
        [
            "OPENROUTER_EXPECTED_API_KEY_SHA256",
            "UPSTREAM_BASE_URL",
            "PROXY_DATA_DIR"
        ]
    );
}

#[test]
fn bad_values_name_the_variable_and_change_nothing() {
    let cases: &[(&str, &str, &str)] = &[
        ("MAX_COST_USD", "five", "expected an amount in usd"),
        ("MAX_COST_USD", "-1", "zero or more"),
        ("MAX_COST_USD", "0.0000001", "at most 6 decimal places"),
        ("MAX_COST_USD", "2000000", "at most 1000000 usd"),
        ("EVALUATION_RUN_ID", "a\u{7}b", "without control characters"),
        (
            "RESTRICTED_MODELS",
            "openai/gpt 4o",
            "without spaces or commas",
        ),
        (
            "PROVIDER_ORDER",
            "openai,openai",
            "duplicate provider \"openai\"",
        ),
        ("PROVIDER_ORDER", "open ai", "expected a provider name"),
        (
            "PROVIDER_ALLOW_FALLBACKS",
            "yes",
            "expected \"true\", \"false\", \"1\" or \"0\"",
        ),
        (
            "OPENROUTER_WORKSPACE_ID",
            "ws/../x",
            "expected a workspace id",
        ),
        (
            "OPENROUTER_EXPECTED_API_KEY_SHA256",
            "abc",
            "64 hexadecimal characters",
        ),
        (
            "UPSTREAM_BASE_URL",
            "http://openrouter.ai",
            "expected an https url",
        ),
        ("PROXY_DATA_DIR", "data", "expected an absolute path"),
    ];
    for &(name, value, message) in cases {
        // A good variable first: it must not survive the bad one.
        let e = apply(&[("MAX_COST_USD", "3"), (name, value)]).unwrap_err();
        assert_eq!(e.key, format!("env {name}"), "{name}={value:?}: {e}");
        assert_eq!((e.line, e.column), (0, 0));
        assert!(e.message.contains(message), "{name}={value:?}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("policy.toml: env {name}: expected"))
                || e.to_string()
                    .starts_with(&format!("policy.toml: env {name}: duplicate")),
            "{e}"
        );
    }
    let mut p = policy();
    let before = p.gateway.clone();
    p.apply_env(&|name| {
        (name == "PROXY_DATA_DIR")
            .then(|| "rel".to_owned())
            .or_else(|| (name == "MAX_COST_USD").then(|| "3".to_owned()))
    })
    .unwrap_err();
    assert_eq!(p.gateway, before, "all or nothing");
}

#[test]
fn the_key_itself_is_never_echoed() {
    let e = apply(&[("OPENROUTER_EXPECTED_API_KEY_SHA256", "sk-or-v1-0123456789")]).unwrap_err();
    assert!(!e.to_string().contains("sk-or"), "{e}");
}

#[test]
fn applying_twice_is_the_same_as_once() {
    let vars = [("RESTRICTED_MODELS", "x/y"), ("MAX_COST_USD", "1.5")];
    let env: HashMap<&str, &str> = vars.into_iter().collect();
    let read = |name: &str| env.get(name).map(|v| (*v).to_owned());
    let mut once = policy();
    once.apply_env(&read).unwrap();
    let mut twice = once.clone();
    twice.apply_env(&read).unwrap();
    assert_eq!(once.gateway, twice.gateway);
}

#[test]
fn every_variable_is_known() {
    assert_eq!(
        ENV_VARS,
        [
            "MAX_COST_USD",
            "EVALUATION_RUN_ID",
            "RESTRICTED_MODELS",
            "PROVIDER_ORDER",
            "PROVIDER_ALLOW_FALLBACKS",
            "OPENROUTER_MANAGEMENT_KEY",
            "OPENROUTER_WORKSPACE_ID",
            "OPENROUTER_EXPECTED_API_KEY_SHA256",
            "UPSTREAM_BASE_URL",
            "PROXY_DATA_DIR",
        ]
    );
    // Every one of them is documented in the README's mapping table.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for name in ENV_VARS {
        assert!(
            readme.contains(&format!("| `{name}`")),
            "{name} missing from README"
        );
    }
}
