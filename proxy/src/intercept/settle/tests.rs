#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::num::NonZeroU32;

use arc_swap::ArcSwap;
use governor::{Quota, RateLimiter};
use tokio::sync::Semaphore;
use tollgate_policy::{Endpoint, Policy};

use super::*;
use crate::intercept::body_budget::BodyBudget;
use crate::intercept::state::WorkspaceStatus;
use crate::metrics::Metrics;
use crate::metrics::spend::SpendMetrics;
use crate::spend::{EstimateConfig, Ledger, PriceTable, RequestMeta};

const WORST: Micros = Micros(5_000);

fn state() -> Arc<State> {
    let policy = Policy::parse(
        "version = 1\n[intercept]\nhosts = [\"openrouter.ai\"]\n",
        "t.toml",
    )
    .unwrap();
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let metrics = Metrics::new();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client =
        crate::upstream::client(provider, None, policy.clone(), Duration::from_secs(1)).unwrap();
    Arc::new(State {
        policy,
        client,
        ledger: Arc::new(Ledger::in_memory(Micros(1_000_000))),
        prices: ArcSwap::from_pointee(PriceTable::new(HashMap::new(), None)),
        workspace: WorkspaceStatus::default(),
        limiter: RateLimiter::keyed(Quota::per_second(NonZeroU32::MIN)),
        concurrency: Arc::new(Semaphore::new(1)),
        body_budget: BodyBudget::new(
            1024,
            &metrics.bounds.body_budget_bytes,
            metrics.bounds.body_budget_in_use_bytes.clone(),
        ),
        injected_key: None,
        estimate: EstimateConfig::default(),
        spend_metrics: SpendMetrics::new(Arc::new(|_: &str| true)),
        metrics,
        evidence: std::sync::OnceLock::new(),
    })
}

fn pending(state: &Arc<State>) -> Pending {
    let meta = RequestMeta {
        endpoint: "chat".to_owned(),
        model: "m".to_owned(),
    };
    let reservation = state.ledger.reserve_amount(meta, WORST).unwrap();
    let request = Arc::new(RequestInfo {
        sni: Arc::from("openrouter.ai"),
        method: http::Method::POST,
        path: "/api/v1/chat/completions".to_owned(),
        started: Instant::now(),
    });
    let metered = Metered {
        endpoint: Endpoint::Chat,
        model: "m".to_owned(),
        stream: false,
        request,
        auth: HeaderValue::from_static("Bearer k"),
        permit: None,
    };
    Pending::new(state.clone(), reservation, metered)
}

/// Settled at the worst case, nothing left reserved, and the request's line counted once.
fn assert_settled_at_worst_case(state: &State) {
    let snapshot = state.ledger.snapshot();
    assert_eq!(snapshot.settled, WORST);
    assert_eq!(snapshot.reserved, Micros(0));
    assert_eq!(snapshot.open_reservations, 0);
    let m = &state.metrics;
    assert_eq!(m.gateway_requests.with_label_values(&["metered"]).get(), 1);
    assert_eq!(m.llm_requests.with_label_values(&["m", "0"]).get(), 1);
}

#[tokio::test]
async fn a_dropped_pending_settles_at_worst_case_and_ends_the_request() {
    let state = state();
    drop(pending(&state));
    assert_settled_at_worst_case(&state);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_settlement_still_settles() {
    let state = state();
    // Waiting on a generation lookup when the future is dropped (client gone, runtime stopping).
    let settle = pending(&state).settle(
        ResponseSummary::default(),
        StatusCode::OK,
        Some("gen-1".to_owned()),
        None,
    );
    let cut = tokio::time::timeout(Duration::from_millis(10), settle).await;
    assert!(cut.is_err(), "the lookup waits longer than the cut");
    assert_settled_at_worst_case(&state);
}

#[tokio::test]
async fn settled_now_is_settled_once() {
    let state = state();
    let s = Settlement::new(Micros(42), SettlementSource::Usage, 200);
    pending(&state).now(s, &ResponseSummary::default(), None);
    assert_eq!(state.ledger.snapshot().settled, Micros(42));
    let m = &state.metrics;
    assert_eq!(m.gateway_requests.with_label_values(&["metered"]).get(), 1);
    assert_eq!(m.llm_requests.with_label_values(&["m", "200"]).get(), 1);
}
