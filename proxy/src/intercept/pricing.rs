//! Keeps the price table current: the policy's prices (rebuilt when the policy changes) plus
//! the upstream's `GET /api/v1/models` list, fetched at start and every `refresh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use super::state::{State, policy_prices};
use crate::spend::price::{self, UpstreamPrices};
use crate::upstream;

/// How often the policy is checked for price changes, and the retry after a failed fetch.
const TICK: Duration = Duration::from_secs(2);
/// The model list is a few MB at most.
const MAX_LIST: usize = 32 * 1024 * 1024;

/// Runs until `shutdown`.
pub async fn refresh(state: Arc<State>, shutdown: CancellationToken) {
    let mut upstream: Option<UpstreamPrices> = None;
    let mut next_fetch = Instant::now();
    let mut retry = TICK;
    // The policy the table was last built from (compared by pointer: a reload swaps the Arc).
    let mut built_from: Option<Arc<tollgate_policy::Policy>> = None;
    loop {
        let policy = state.policy.load_full();
        let p = &policy.gateway.pricing;
        let due = p.fetch && Instant::now() >= next_fetch;
        let mut changed = built_from.as_ref().is_none_or(|b| !Arc::ptr_eq(b, &policy));
        if due {
            match fetch(&state, &policy).await {
                Ok(list) => {
                    tracing::info!(
                        models = list.models.len(),
                        skipped = list.skipped.len(),
                        "model prices fetched"
                    );
                    upstream = Some(list);
                    next_fetch = Instant::now() + p.refresh;
                    retry = TICK;
                    changed = true;
                }
                Err(error) => {
                    // Back off (to at most the refresh interval) so an unreachable upstream is
                    // not hammered and the log not flooded.
                    tracing::warn!(%error, retry_in = ?retry, "fetching model prices failed");
                    next_fetch = Instant::now() + retry;
                    retry = (retry * 2).min(p.refresh.max(TICK));
                }
            }
        }
        if changed {
            let table = policy_prices(&policy);
            let table = match (&upstream, p.fetch) {
                (Some(list), true) => table.with_upstream(list.clone()),
                _ => table,
            };
            state.prices.store(Arc::new(table));
            built_from = Some(policy.clone());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn fetch(state: &State, policy: &tollgate_policy::Policy) -> Result<UpstreamPrices, String> {
    let g = &policy.gateway;
    let request = Request::get(g.upstream.url("/api/v1/models"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let (parts, body) = upstream::fetch(&state.client, request, g.read_timeout, MAX_LIST)
        .await
        .map_err(|e| e.to_string())?;
    if !parts.status.is_success() {
        return Err(format!("upstream answered {}", parts.status));
    }
    price::parse_models(&body).map_err(|e| e.to_string())
}
