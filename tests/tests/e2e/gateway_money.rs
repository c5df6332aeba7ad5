//! Amounts through the real binary: `MAX_COST_USD` and the policy's prices are read with the
//! operator grammar of `tollgate_policy::money` (a plain decimal, exact, at most 1000000 USD),
//! the same one the launcher checks `--budget-usd` with. A sign or an exponent, which a person
//! writes by accident (`1e3` for `1e-3`), stops the proxy at start with the variable named,
//! rather than becoming a budget a thousand or a million times off.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use tollgate_tests::gateway::{Gateway, GatewaySpec, MODEL};

/// Starts a proxy that must refuse to start; returns what the harness saw (its log included).
async fn refused(gw: &Gateway, spec: &GatewaySpec, envs: &[(&str, &str)]) -> String {
    match gw.start_with(spec, envs).await {
        Ok(_) => panic!("started with {envs:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_cost_usd_must_be_a_plain_decimal() {
    let gw = Gateway::new().await.unwrap();
    for value in ["1e-3", "1E3", "+5", ".5", "5."] {
        let err = refused(&gw, &gw.spec(), &[("MAX_COST_USD", value)]).await;
        assert!(err.contains("exit status: 64"), "{value}: {err}");
        assert!(
            err.contains("env MAX_COST_USD: expected a plain decimal amount of usd"),
            "{value}: {err}"
        );
        // The log line is JSON: the quotes around the value are escaped.
        assert!(
            err.contains(&format!(r#"found \"{value}\""#)),
            "{value}: {err}"
        );
    }
    // The plain decimal is read exactly.
    let run = gw
        .start_with(&gw.spec(), &[("MAX_COST_USD", "0.001")])
        .await
        .unwrap();
    let (_, usage) = run.usage_get("/api/v1/usage").await.unwrap();
    let usage: Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(usage["max_cost_usd"], 0.001);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_price_with_an_exponent_stops_the_proxy() {
    let gw = Gateway::new().await.unwrap();
    let spec = gw.spec().price(MODEL, "1e-6", "0.00002");
    let err = refused(&gw, &spec, &[]).await;
    assert!(err.contains("exit status: 64"), "{err}");
    assert!(
        err.contains(".prompt: expected a plain decimal amount of usd"),
        "{err}"
    );
}
