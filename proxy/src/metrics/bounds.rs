//! Resource-bound series, part of the one catalog in `crate::metrics` (kept as a block so the
//! listeners, the bind retry and the gateway's body budget share one declaration).

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Why a read-only endpoint (admin, usage) closed a connection it did not answer.
pub const READ_ONLY_CLOSE_REASONS: [&str; 4] = [
    "connection-limit",
    "header-timeout",
    "headers-too-large",
    "lifetime",
];

/// Listener names used as the `listener` label.
pub const LISTENERS: [&str; 4] = ["admin", "usage", "sni", "capture"];

/// Series for the listener caps, the bind retry and the in-flight body budget.
#[derive(Clone)]
pub struct BoundsMetrics {
    /// `tollgate_read_only_closed_total{listener,reason}`: connections cut by a bound.
    pub read_only_closed: IntCounterVec,
    /// `tollgate_listener_bound{listener}`: 1 once every address of the listener is bound.
    pub listener_bound: IntGaugeVec,
    /// `tollgate_bind_retries_total{listener}`: binds that found the port in use.
    pub bind_retries: IntCounterVec,
    /// `tollgate_body_budget_bytes`: the gateway's in-flight body budget.
    pub body_budget_bytes: IntGauge,
    /// `tollgate_body_budget_in_use_bytes`: what in-flight requests hold of it now.
    pub body_budget_in_use_bytes: IntGauge,
}

impl BoundsMetrics {
    /// Declares the series.
    pub fn new() -> Self {
        let m = Self {
            read_only_closed: IntCounterVec::new(
                Opts::new(
                    "tollgate_read_only_closed_total",
                    "Connections to a read-only endpoint (admin, usage) closed by a resource bound, by reason.",
                ),
                &["listener", "reason"],
            )
            .expect("static metric definition is valid"),
            listener_bound: IntGaugeVec::new(
                Opts::new(
                    "tollgate_listener_bound",
                    "1 when the listener's port is bound; 0 while another socket holds it.",
                ),
                &["listener"],
            )
            .expect("static metric definition is valid"),
            bind_retries: IntCounterVec::new(
                Opts::new(
                    "tollgate_bind_retries_total",
                    "Bind attempts that found the port held by another socket.",
                ),
                &["listener"],
            )
            .expect("static metric definition is valid"),
            body_budget_bytes: IntGauge::new(
                "tollgate_body_budget_bytes",
                "Bytes of request bodies (and their parsed form) the gateway may hold across all requests.",
            )
            .expect("static metric definition is valid"),
            body_budget_in_use_bytes: IntGauge::new(
                "tollgate_body_budget_in_use_bytes",
                "Bytes of the body budget held by requests in flight.",
            )
            .expect("static metric definition is valid"),
        };
        for listener in ["admin", "usage"] {
            for reason in READ_ONLY_CLOSE_REASONS {
                m.read_only_closed.with_label_values(&[listener, reason]);
            }
        }
        for listener in LISTENERS {
            m.bind_retries.with_label_values(&[listener]);
        }
        m
    }

    /// Registers every series in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.read_only_closed.clone()))?;
        registry.register(Box::new(self.listener_bound.clone()))?;
        registry.register(Box::new(self.bind_retries.clone()))?;
        registry.register(Box::new(self.body_budget_bytes.clone()))?;
        registry.register(Box::new(self.body_budget_in_use_bytes.clone()))?;
        Ok(())
    }
}

impl Default for BoundsMetrics {
    fn default() -> Self {
        Self::new()
    }
}
