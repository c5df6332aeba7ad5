//! What every intercepted request shares: the policy, the upstream client, the ledger, prices,
//! limits and metrics. A leaf module (like mini-redis's `db.rs`): the gateway builds a [`State`],
//! and `exchange`, `settle`, `pricing` and `workspace` use it; it imports none of them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use governor::DefaultKeyedRateLimiter;
use http::StatusCode;
use tokio::sync::Semaphore;
use tollgate_policy::{GatewaySettings, KeySource, Policy, Price};

use super::body_budget::BodyBudget;
use crate::enforce::{Reason, Refusal};
use crate::metrics::Metrics;
use crate::metrics::spend::SpendMetrics;
use crate::spend::price::{ModelEntry, ModelLimits};
use crate::spend::{EstimateConfig, Ledger, ModelPrice, PriceTable};
use crate::upstream::HttpsClient;

/// Shared by every intercepted request.
pub struct State {
    /// The current policy (hot-reloaded; per-request settings are read from it).
    pub policy: Arc<ArcSwap<Policy>>,
    /// The pooled upstream client.
    pub client: HttpsClient,
    /// The budget ledger.
    pub ledger: Arc<Ledger>,
    /// Model prices: the policy's table plus the upstream's list, swapped on each refresh.
    pub prices: ArcSwap<PriceTable>,
    /// The workspace privacy check's latest result.
    pub workspace: WorkspaceStatus,
    /// Requests per second per intercepted host.
    pub limiter: DefaultKeyedRateLimiter<Arc<str>>,
    /// Concurrent upstream requests.
    pub concurrency: Arc<Semaphore>,
    /// Bytes of request bodies held across all requests.
    pub body_budget: BodyBudget,
    /// The key injected in place of the agent's, when the policy says so.
    pub injected_key: Option<String>,
    /// Bounds for the worst-case estimate.
    pub estimate: EstimateConfig,
    /// The metrics catalog.
    pub metrics: Metrics,
    /// The spend stage's series (labels the spend with policy-named models).
    pub spend_metrics: SpendMetrics,
    /// The hash-chained decision log, set once by the server after start (if any).
    pub evidence: std::sync::OnceLock<Arc<crate::evidence::Recorder>>,
}

/// The workspace privacy check's latest successful read (written by `workspace::poll`).
#[derive(Debug, Default)]
pub struct WorkspaceStatus {
    latest: RwLock<Option<Reading>>,
}

#[derive(Clone, Debug)]
struct Reading {
    at: Instant,
    enabled_flags: Vec<&'static str>,
}

impl WorkspaceStatus {
    /// Refuses requests while the workspace is unsafe, or not known to be safe recently enough.
    pub fn check(&self, g: &GatewaySettings) -> Result<(), Refusal> {
        if g.workspace.enabled().is_none() {
            return Ok(());
        }
        let latest = self
            .latest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match latest {
            None => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::WorkspaceUnverified,
                "the workspace's privacy settings have not been verified yet",
            )),
            Some(r) if r.at.elapsed() > g.workspace.stale_after => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::WorkspaceStale,
                "the workspace's privacy settings could not be verified recently",
            )),
            Some(r) if !r.enabled_flags.is_empty() => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                Reason::WorkspaceUnsafe,
                format!(
                    "the workspace has data logging enabled: {}",
                    r.enabled_flags.join(", ")
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Stores a successful read: the privacy flags that were on.
    pub fn record(&self, enabled_flags: Vec<&'static str>) {
        let reading = Reading {
            at: Instant::now(),
            enabled_flags,
        };
        *self
            .latest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reading);
    }
}

/// A secret the policy names could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the {what} from {source_name}: {reason}")]
pub struct SecretError {
    /// Which secret.
    pub what: &'static str,
    /// Where it was to come from (never the value).
    pub source_name: String,
    /// Why not.
    pub reason: String,
}

/// Reads a secret from where the policy says it is; the value never reaches a log line.
pub fn read_secret(what: &'static str, source: &KeySource) -> Result<String, SecretError> {
    let err = |reason: String| SecretError {
        what,
        source_name: source.to_string(),
        reason,
    };
    let value = match source {
        KeySource::Env(name) => std::env::var(name).map_err(|_| err("not set".into()))?,
        KeySource::File(path) => read_file(path).map_err(|e| err(e.to_string()))?,
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(err("empty".into()));
    }
    Ok(value)
}

fn read_file(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

/// The policy's own prices (and fallback) as a price table; the upstream list is merged in by
/// the refresh task.
pub fn policy_prices(policy: &Policy) -> PriceTable {
    let p = &policy.gateway.pricing;
    let entries: HashMap<String, ModelEntry> = p
        .models
        .iter()
        .map(|(model, price)| {
            (
                model.clone(),
                ModelEntry {
                    price: model_price(price),
                    limits: ModelLimits::default(),
                },
            )
        })
        .collect();
    PriceTable::new(entries, p.fallback.as_ref().map(model_price))
}

fn model_price(p: &Price) -> ModelPrice {
    ModelPrice {
        prompt: p.prompt,
        completion: p.completion,
        request: p.request,
        image: p.image,
        reasoning: Some(p.reasoning),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn status_is_unverified_then_safe_then_stale_or_unsafe() {
        let policy = tollgate_policy::Policy::parse(
            "version = 1\n[intercept]\nhosts = [\"openrouter.ai\"]\n[intercept.workspace]\nid = \"ws1\"\nrefresh = \"1s\"\nstale_after = \"2s\"\n",
            "t.toml",
        )
        .unwrap();
        let g = &policy.gateway;
        let status = WorkspaceStatus::default();
        assert_eq!(
            status.check(g).unwrap_err().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        status.record(vec![]);
        assert!(status.check(g).is_ok());
        status.record(vec!["is_data_discount_logging_enabled"]);
        assert_eq!(status.check(g).unwrap_err().status, StatusCode::FORBIDDEN);
        *status.latest.write().unwrap() = Some(Reading {
            at: Instant::now() - Duration::from_secs(3),
            enabled_flags: vec![],
        });
        assert_eq!(status.check(g).unwrap_err().reason, Reason::WorkspaceStale);
    }
}
