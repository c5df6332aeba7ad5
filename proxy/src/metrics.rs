//! The one metrics catalog: every series tollgate exports is declared here, with its help text.
//!
//! Labels stay bounded: routes and reasons are static strings, and a host appears only as the
//! policy pattern that matched it (never the raw SNI the agent sent).

pub mod bounds;
pub mod spend;

pub use bounds::BoundsMetrics;
pub use spend::SpendMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every ClientHello failure reason (see `client_hello::HelloError::reason`).
pub const HELLO_FAILURES: [&str; 10] = [
    "not-tls",
    "not-client-hello",
    "malformed",
    "too-large",
    "timeout",
    "truncated",
    "no-sni",
    "invalid-sni",
    "ip-literal-sni",
    "io",
];

/// Buckets for LLM latencies: from a cached answer to a long reasoning stream.
const LLM_BUCKETS: [f64; 12] = [
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

/// Label value for anything the policy does not name.
pub const OTHER: &str = "other";

/// Every series tollgate exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Connections by final route, reason and matched policy rule.
    pub connections: IntCounterVec,
    /// ClientHello failures by reason (each also counted in `connections` as a reject).
    pub client_hello_failures: IntCounterVec,
    /// Connections refused before reading a byte (the open-connection limit).
    pub connections_refused: IntCounterVec,
    /// Captured (non-SNI-port) connections rejected, by destination port (escape attempts) and
    /// the decision's reason.
    pub capture_rejections: IntCounterVec,
    /// Connections currently open.
    pub open_connections: IntGauge,
    /// Bytes copied by tunnels, by direction (upstream = agent → host).
    pub tunnel_bytes: IntCounterVec,
    /// Time from accept to close.
    pub connection_duration: Histogram,
    /// 1 for the current phase, 0 for the other.
    pub phase: IntGaugeVec,
    /// Phase transitions by destination phase and the source that decided it.
    pub phase_transitions: IntCounterVec,
    /// Policy reloads by result (`ok`, `error`).
    pub policy_reloads: IntCounterVec,
    /// Accept errors (e.g. out of file descriptors).
    pub accept_errors: IntCounter,
    /// Constant 1, labelled with the build's version and commit.
    pub build_info: IntGaugeVec,
    /// LLM requests forwarded, by model (policy-named or `other`) and upstream status.
    pub llm_requests: IntCounterVec,
    /// LLM requests refused by the gateway, by reason.
    pub llm_denials: IntCounterVec,
    /// Responses served by a model or provider the policy refuses, by kind (`model`, `provider`).
    pub llm_served_violations: IntCounterVec,
    /// Every gateway request, once, by how it ended (`intercept::record::Kind`).
    pub gateway_requests: IntCounterVec,
    /// Upstream time from sending the request to the end of the response.
    pub upstream_latency: Histogram,
    /// Upstream time from sending the request to the response headers.
    pub upstream_ttfb: Histogram,
    /// Listener caps, bind retries and the gateway's body budget (`metrics::bounds`).
    pub bounds: BoundsMetrics,
    /// DNS queries by result (`crate::dns::decide::Outcome`) and record type (bounded).
    pub dns_queries: IntCounterVec,
    /// Time of one forwarded DNS query's upstream exchange.
    pub dns_upstream_latency: Histogram,
    /// Records appended to the hash-chained decision log (`evidence`).
    pub evidence_records: IntCounter,
    /// Records the decision log could not take, by reason (`io`, `size-limit`); each is also
    /// counted in the run receipt.
    pub evidence_write_failures: IntCounterVec,
    /// 1 when the agent phase runs in observe mode (routes as verification; never the default).
    pub observe_mode: IntGauge,
}

impl Metrics {
    /// Builds the catalog in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            connections: counter_vec(
                "tollgate_connections_total",
                "Connections by route, reason and policy rule.",
                &["route", "reason", "rule"],
            ),
            client_hello_failures: counter_vec(
                "tollgate_client_hello_failures_total",
                "ClientHello read failures by reason.",
                &["reason"],
            ),
            connections_refused: counter_vec(
                "tollgate_connections_refused_total",
                "Connections closed at accept, before reading, by reason.",
                &["reason"],
            ),
            capture_rejections: counter_vec(
                "tollgate_capture_rejections_total",
                "Captured connections rejected, by original destination port (well-known ports; others are `other`) and reason.",
                &["port", "reason"],
            ),
            open_connections: IntGauge::new(
                "tollgate_open_connections",
                "Connections currently open.",
            )
            .expect("static metric definition is valid"),
            tunnel_bytes: counter_vec(
                "tollgate_tunnel_bytes_total",
                "Bytes copied by tunnels; upstream is agent to host, downstream host to agent.",
                &["direction"],
            ),
            connection_duration: histogram(
                "tollgate_connection_duration_seconds",
                "Connection lifetime from accept to close.",
                vec![
                    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
                ],
            ),
            phase: gauge_vec(
                "tollgate_phase",
                "1 for the Pod's current phase.",
                &["phase"],
            ),
            phase_transitions: counter_vec(
                "tollgate_phase_transitions_total",
                "Phase changes by new phase and source.",
                &["to", "source"],
            ),
            policy_reloads: counter_vec(
                "tollgate_policy_reloads_total",
                "Policy reloads by result.",
                &["result"],
            ),
            accept_errors: IntCounter::new("tollgate_accept_errors_total", "Errors from accept().")
                .expect("static metric definition is valid"),
            build_info: gauge_vec(
                "tollgate_build_info",
                "Build provenance; the value is always 1.",
                &["version", "commit"],
            ),
            llm_requests: counter_vec(
                "tollgate_llm_requests_total",
                "LLM requests forwarded, by model and upstream status.",
                &["model", "status"],
            ),
            llm_denials: counter_vec(
                "tollgate_llm_denials_total",
                "LLM requests refused by the gateway, by reason.",
                &["reason"],
            ),
            llm_served_violations: counter_vec(
                "tollgate_llm_served_violations_total",
                "LLM responses served by a model or provider the policy refuses, by kind.",
                &["kind"],
            ),
            gateway_requests: counter_vec(
                "tollgate_gateway_requests_total",
                "Gateway requests by how they ended: refused, usage, free, metered.",
                &["outcome"],
            ),
            upstream_latency: histogram(
                "tollgate_upstream_latency_seconds",
                "Upstream time from request to the end of the response.",
                LLM_BUCKETS.to_vec(),
            ),
            upstream_ttfb: histogram(
                "tollgate_upstream_ttfb_seconds",
                "Upstream time from request to the response headers.",
                LLM_BUCKETS.to_vec(),
            ),
            dns_queries: counter_vec(
                "tollgate_dns_queries_total",
                "DNS queries by result and record type (names appear only in logs).",
                &["result", "qtype"],
            ),
            dns_upstream_latency: histogram(
                "tollgate_dns_upstream_latency_seconds",
                "Upstream exchange time of forwarded DNS queries.",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0, 5.0,
                ],
            ),
            evidence_records: IntCounter::new(
                "tollgate_evidence_records_total",
                "Records appended to the hash-chained decision log.",
            )
            .expect("static metric definition is valid"),
            evidence_write_failures: counter_vec(
                "tollgate_evidence_write_failures_total",
                "Decision records the log could not take, by reason (also counted in the run receipt).",
                &["reason"],
            ),
            observe_mode: IntGauge::new(
                "tollgate_observe_mode",
                "1 when the agent phase routes as verification and only records its own decisions.",
            )
            .expect("static metric definition is valid"),
            bounds: BoundsMetrics::new(),
            registry,
        };
        m.register_all();
        m.register_dns();
        m.register_evidence();
        m.bounds
            .register(&m.registry)
            .expect("each series is registered once, with a unique name");
        m.zero_known_series();
        m.build_info
            .with_label_values(&[crate::VERSION, crate::COMMIT])
            .set(1);
        m
    }

    /// Creates the series whose label values are known up front at 0, so alerts and rate()
    /// see a zero rather than an absent series before the first event.
    fn zero_known_series(&self) {
        for result in ["ok", "error"] {
            self.policy_reloads.with_label_values(&[result]);
        }
        for reason in HELLO_FAILURES {
            self.client_hello_failures.with_label_values(&[reason]);
        }
        // Not a parse failure but a refusal of what the hello carries (route's ECH screen).
        self.client_hello_failures.with_label_values(&["ech"]);
        for to in ["agent", "verification"] {
            for source in ["label", "sentinel", "policy"] {
                self.phase_transitions.with_label_values(&[to, source]);
            }
        }
        self.connections_refused
            .with_label_values(&[crate::route::Reason::ConnectionLimit.as_str()]);
        for direction in ["upstream", "downstream"] {
            self.tunnel_bytes.with_label_values(&[direction]);
        }
    }

    /// The DNS stage's series (kept apart from `register_all` so the two lists merge easily).
    fn register_dns(&self) {
        for c in [
            Box::new(self.dns_queries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.dns_upstream_latency.clone()),
        ] {
            self.registry
                .register(c)
                .expect("each series is registered once, with a unique name");
        }
        for qtype in ["A", "AAAA"] {
            for result in crate::dns::decide::Outcome::ALL {
                self.dns_queries
                    .with_label_values(&[result.as_str(), qtype]);
            }
        }
        self.connections_refused
            .with_label_values(&["dns-tcp-limit"]);
        for kind in crate::intercept::record::Kind::ALL {
            self.gateway_requests.with_label_values(&[kind.as_str()]);
        }
        for kind in crate::enforce::ServedKind::ALL {
            self.llm_served_violations
                .with_label_values(&[kind.as_str()]);
        }
    }

    /// The evidence series (kept apart from `register_all` so the lists merge easily).
    fn register_evidence(&self) {
        for c in [
            Box::new(self.evidence_records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.evidence_write_failures.clone()),
            Box::new(self.observe_mode.clone()),
        ] {
            self.registry
                .register(c)
                .expect("each series is registered once, with a unique name");
        }
    }

    fn register_all(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 18] = [
            Box::new(self.llm_requests.clone()),
            Box::new(self.gateway_requests.clone()),
            Box::new(self.llm_denials.clone()),
            Box::new(self.llm_served_violations.clone()),
            Box::new(self.upstream_latency.clone()),
            Box::new(self.upstream_ttfb.clone()),
            Box::new(self.capture_rejections.clone()),
            Box::new(self.connections.clone()),
            Box::new(self.client_hello_failures.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.open_connections.clone()),
            Box::new(self.tunnel_bytes.clone()),
            Box::new(self.connection_duration.clone()),
            Box::new(self.phase.clone()),
            Box::new(self.phase_transitions.clone()),
            Box::new(self.policy_reloads.clone()),
            Box::new(self.accept_errors.clone()),
            Box::new(self.build_info.clone()),
        ];
        for c in collectors {
            self.registry
                .register(c)
                .expect("each series is registered once, with a unique name");
        }
    }

    /// The registry, for modules that add their own series (the intercept gateway).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// A labelled counter of the catalog (the definitions are static, so building cannot fail).
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition is valid")
}

/// A labelled gauge of the catalog.
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition is valid")
}

/// A histogram of the catalog with its buckets.
fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition is valid")
}

/// A bounded label for a destination port: the port itself for well-known ports and common
/// service ports, `other` for the rest (an agent scanning ports must not mint 65k series).
pub fn port_label(port: u16) -> std::borrow::Cow<'static, str> {
    const SERVICES: [u16; 12] = [
        1080, 2375, 3128, 3306, 5432, 6379, 8000, 8080, 8443, 9000, 9200, 27017,
    ];
    if port < 1024 || SERVICES.contains(&port) {
        std::borrow::Cow::Owned(port.to_string())
    } else {
        std::borrow::Cow::Borrowed(OTHER)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_series_exist_at_zero_before_any_event() {
        // client_hello's tests check HELLO_FAILURES against every HelloError::reason.
        let text = String::from_utf8(Metrics::new().render()).unwrap_or_default();
        assert!(text.contains("tollgate_client_hello_failures_total{reason=\"too-large\"} 0"));
        assert!(text.contains("tollgate_policy_reloads_total{result=\"error\"} 0"));
        assert!(text.contains("tollgate_build_info{"));
    }
}
