//! `--budget-usd` through the real binary: the launcher accepts exactly the amounts the proxy
//! accepts as `MAX_COST_USD` (one grammar, `tollgate_policy::money`), so a budget the proxy
//! would refuse fails the launch (exit 64) instead of crash-looping the Pod's sidecar.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::{Command, Output};

use tollgate_policy::Policy;

const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

fn render(budget: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate-launch"))
        .args([
            "render",
            "--archive-url=https://tasks.example/t.tar.gz",
            "--archive-sha256",
            SHA,
            "--task=t",
            "--run=r",
            &format!("--budget-usd={budget}"),
        ])
        .env_remove("TOLLGATE_NAMESPACE")
        .output()
        .unwrap()
}

/// The `MAX_COST_USD` value in a rendered Pod.
fn max_cost_env(yaml: &str) -> String {
    let at = yaml
        .find("name: MAX_COST_USD")
        .expect("MAX_COST_USD in the Pod");
    let value = yaml[at..].split("value: ").nth(1).unwrap();
    let value = value.lines().next().unwrap().trim();
    value.trim_matches(|c| c == '"' || c == '\'').to_owned()
}

#[test]
fn a_budget_the_proxy_would_refuse_fails_the_launch() {
    // Over the proxy's 1000000 USD cap: rendered before, refused by the proxy at start.
    for (budget, reason) in [
        ("1000000.5", "expected at most 1000000 usd"),
        ("2000000", "expected at most 1000000 usd"),
        ("0.0000001", "expected at most 6 decimal places"),
        ("1e3", "no exponent"),
    ] {
        let out = render(budget);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{budget}: {stderr}");
        assert!(stderr.contains(reason), "{budget}: {stderr}");
        let policy_says = Policy::embedded_default()
            .apply_env(&|k: &str| (k == "MAX_COST_USD").then(|| budget.to_owned()));
        assert!(policy_says.is_err(), "{budget}: the proxy refuses it too");
    }
}

#[test]
fn a_rendered_budget_is_read_back_by_the_proxy_exactly() {
    for (budget, micros) in [
        ("2.50", 2_500_000),
        ("1000000", 1_000_000_000_000),
        ("0.000001", 1),
        ("0", 0),
    ] {
        let out = render(budget);
        assert_eq!(out.status.code(), Some(0), "{budget}");
        let value = max_cost_env(&String::from_utf8_lossy(&out.stdout));
        let mut policy = Policy::embedded_default();
        policy
            .apply_env(&|k: &str| (k == "MAX_COST_USD").then(|| value.clone()))
            .unwrap();
        assert_eq!(
            policy.gateway.budget.max_cost_micros.map(|m| m.0),
            Some(micros),
            "{budget} rendered as {value:?}"
        );
    }
}
