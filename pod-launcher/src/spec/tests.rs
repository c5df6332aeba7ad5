#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
use super::*;

#[test]
fn task_ids_follow_the_oci_component_grammar() {
    for ok in [
        "django__django-12345",
        "a",
        "0",
        "astropy.io",
        "x--y",
        "a_b",
    ] {
        assert!(TaskId::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "A",
        "a___b",
        "a..b",
        "a_-b",
        "a/b",
        "a b",
        &"a".repeat(64),
    ] {
        assert_eq!(TaskId::parse(bad), Err(SpecError::TaskId(bad.to_owned())));
    }
}

#[test]
fn run_ids_are_label_values() {
    assert!(RunId::parse("2026-11-28_run.7").is_ok());
    assert!(RunId::parse("Run7").is_ok());
    for bad in ["", "-x", "x-", "a/b", "ü", &"r".repeat(64)] {
        assert!(RunId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn budgets_are_integer_micro_usd() {
    assert_eq!(budget("2.5"), Ok(Micros(2_500_000)));
    assert_eq!(budget("10"), Ok(Micros(10_000_000)));
    assert_eq!(budget("0.000001"), Ok(Micros(1)));
    assert_eq!(Micros(2_500_000).to_string(), "2.5");
    assert_eq!(Micros(10_000_000).to_string(), "10");
    assert_eq!(Micros(1).to_string(), "0.000001");
    for bad in [
        "",
        "-1",
        "1e3",
        "0.0000001",
        "1.",
        ".5",
        "1,5",
        "99999999999999999999",
        "1000000.000001", // more than the proxy's MAX_COST_USD accepts
    ] {
        assert!(budget(bad).is_err(), "{bad}");
    }
}

#[test]
fn quantities() {
    for ok in ["500m", "2", "1.5", "4Gi", "100Mi", "1k"] {
        assert!(quantity("--cpu", ok).is_ok(), "{ok}");
    }
    for bad in ["", "Gi", "1 Gi", "1gb", "1..5", "-1"] {
        assert!(quantity("--cpu", bad).is_err(), "{bad}");
    }
}

#[test]
fn registries_are_host_and_port_only() {
    for ok in [
        "zot.tollgate-system.svc.cluster.local:5000",
        "127.0.0.1:1234",
        "ghcr.io",
    ] {
        assert!(Registry::parse(ok, Scheme::Http).is_ok(), "{ok}");
    }
    for bad in ["http://x", "x/y", "x:0", "x:99999", "", "a b"] {
        assert!(Registry::parse(bad, Scheme::Http).is_err(), "{bad}");
    }
}

#[test]
fn label_keys() {
    assert!(label_key("ridges.ai/phase").is_ok());
    assert!(label_key("phase").is_ok());
    for bad in ["", "/phase", "Ridges.AI/phase", "ridges.ai/", "a/b/c"] {
        assert!(label_key(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_proxy_identity_is_refused_for_the_agent() {
    assert_eq!(
        agent_id("uid", 1337),
        Err(SpecError::ProxyIdentity { what: "uid" })
    );
    assert_eq!(agent_id("uid", 1000), Ok(1000));
    assert_eq!(
        agent_id("gid", 0),
        Err(SpecError::RootIdentity {
            what: "gid",
            value: 0
        })
    );
    assert!(agent_id("uid", -1).is_err());
}

#[test]
fn sha256_becomes_a_tag() {
    let hex = "AB".repeat(32);
    let d = Sha256Hex::parse(&format!("sha256:{hex}")).unwrap();
    assert_eq!(d.tag(), format!("sha256-{}", "ab".repeat(32)));
    assert!(Sha256Hex::parse("abc").is_err());
}

#[test]
fn proxy_env_keys_are_the_proxys() {
    assert_eq!(
        proxy_env("PROVIDER_ORDER=a,b"),
        Ok(("PROVIDER_ORDER".into(), "a,b".into()))
    );
    assert!(proxy_env("PATH=/x").is_err());
    assert!(proxy_env("PROVIDER_ORDER").is_err());
}
