//! The gateway's one per-request exit (pingora's `logging()` hook, the router's
//! `connection::record`): every request ends here, whatever happened to it, with one log line
//! (`message="request"`) and its metrics. Refused, answered locally, forwarded free or metered
//! and settled: the same fields, `-` where a field does not apply.

use std::sync::Arc;
use std::time::Instant;

use http::Method;

use super::state::State;
use crate::enforce::{Refusal, Violation};
use crate::evidence::record::Llm;
use crate::spend::{Micros, SettlementSource};

/// Who asked for what, kept from the request's arrival to its line.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    /// The intercepted host the TLS session was for.
    pub sni: Arc<str>,
    /// The request method.
    pub method: Method,
    /// The request path (no query).
    pub path: String,
    /// When the request arrived.
    pub started: Instant,
}

/// How a request ended: the `outcome` field and the `tollgate_gateway_requests_total` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Refused by the gateway (nothing forwarded); the reason is a [`Refusal`]'s.
    Refused,
    /// `GET /api/v1/usage`, answered by the gateway itself.
    Usage,
    /// Forwarded, free (`GET /api/v1/models`): nothing reserved or settled.
    Free,
    /// Forwarded, priced: reserved before and settled after.
    Metered,
}

impl Kind {
    /// Every kind, for pre-creating label sets.
    pub const ALL: [Kind; 4] = [Kind::Refused, Kind::Usage, Kind::Free, Kind::Metered];

    /// The label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::Usage => "usage",
            Kind::Free => "free",
            Kind::Metered => "metered",
        }
    }
}

/// What a metered request was charged.
#[derive(Clone, Copy, Debug)]
pub struct Charge {
    /// The cost learned (or the worst case).
    pub cost: Micros,
    /// What the ledger charged.
    pub charged: Micros,
    /// What remains of the budget after it.
    pub remaining: Micros,
    /// Where the cost came from.
    pub source: SettlementSource,
    /// What was charged beyond the reservation (the budget's overcharge).
    pub overcharge: Micros,
}

/// One request's end, as the line and the metrics see it.
#[derive(Debug)]
pub struct Exit<'a> {
    /// How it ended.
    pub kind: Kind,
    /// The status sent to the agent (the upstream's, when it answered).
    pub status: u16,
    /// The refusal's reason (`Refused` only).
    pub reason: Option<&'static str>,
    /// The endpoint's policy name, once it was known.
    pub endpoint: Option<&'static str>,
    /// The requested model (metered only; the ledger's key).
    pub model: &'a str,
    /// Whether the agent asked for a stream.
    pub stream: bool,
    /// The settlement (metered only).
    pub charge: Option<Charge>,
    /// The model that served it, as the response or the generation record named it.
    pub served_model: Option<&'a str>,
    /// The provider that served it.
    pub served_provider: Option<&'a str>,
    /// What served it against the policy's rules, if that broke them.
    pub violation: Option<&'a Violation>,
    /// Whether the response was withheld from the agent for that violation.
    pub withheld: bool,
    /// What went wrong, if anything (refusal message, upstream error, note).
    pub error: Option<&'a str>,
}

impl<'a> Exit<'a> {
    /// A request the gateway refused.
    pub fn refused(refusal: &'a Refusal) -> Self {
        Self {
            reason: Some(refusal.reason.as_str()),
            error: Some(&refusal.message),
            ..Self::bare(Kind::Refused, refusal.status.as_u16())
        }
    }

    /// A request without a model or a charge.
    pub fn bare(kind: Kind, status: u16) -> Self {
        Self {
            kind,
            status,
            reason: None,
            endpoint: None,
            model: "",
            stream: false,
            charge: None,
            served_model: None,
            served_provider: None,
            violation: None,
            withheld: false,
            error: None,
        }
    }
}

/// Writes the request's one line and updates its metrics.
pub fn record(state: &State, req: &RequestInfo, exit: &Exit<'_>) {
    let m = &state.metrics;
    m.gateway_requests
        .with_label_values(&[exit.kind.as_str()])
        .inc();
    match exit.kind {
        Kind::Refused => {
            m.llm_denials
                .with_label_values(&[exit.reason.unwrap_or("-")])
                .inc();
        }
        Kind::Metered => {
            let model = state.spend_metrics.model_label(exit.model);
            m.llm_requests
                .with_label_values(&[model, &exit.status.to_string()])
                .inc();
        }
        Kind::Usage | Kind::Free => {}
    }
    if let Some(v) = exit.violation {
        m.llm_served_violations
            .with_label_values(&[v.kind.as_str()])
            .inc();
        tracing::warn!(
            sni = %req.sni,
            model = exit.model,
            served_model = exit.served_model.unwrap_or("-"),
            served_provider = exit.served_provider.unwrap_or("-"),
            kind = v.kind.as_str(),
            withheld = exit.withheld,
            "{}", v.message
        );
    }
    let usd = |f: fn(&Charge) -> Micros| {
        exit.charge
            .as_ref()
            .map_or("-".into(), |c| f(c).to_string())
    };
    tracing::info!(
        target: "tollgate::request",
        sni = %req.sni,
        method = %req.method,
        path = %req.path,
        outcome = exit.kind.as_str(),
        status = exit.status,
        reason = exit.reason.unwrap_or("-"),
        endpoint = exit.endpoint.unwrap_or("-"),
        model = if exit.model.is_empty() { "-" } else { exit.model },
        stream = exit.stream,
        served_model = exit.served_model.unwrap_or("-"),
        served_provider = exit.served_provider.unwrap_or("-"),
        violation = exit.violation.map_or("-", Violation::as_str),
        withheld = exit.withheld,
        cost_usd = %usd(|c| c.cost),
        charged_usd = %usd(|c| c.charged),
        remaining_usd = %usd(|c| c.remaining),
        source = exit.charge.as_ref().map_or("-", |c| c.source.as_str()),
        latency_ms = req.started.elapsed().as_millis() as u64,
        error = exit.error.unwrap_or("-"),
        "request"
    );
    chain(state, exit);
}

/// Appends the request to the hash-chained decision log: refusals and metered requests (the
/// ones a policy decided or that cost money).
fn chain(state: &State, exit: &Exit<'_>) {
    let Some(evidence) = state.evidence.get() else {
        return;
    };
    let record = match (exit.kind, &exit.charge) {
        (Kind::Refused, _) => Llm {
            model: None,
            served_model: None,
            served_provider: None,
            status: exit.status,
            reason: exit.reason.unwrap_or("-").to_owned(),
            charged_micros: 0,
            overcharge_micros: 0,
            violation: None,
        },
        // Forwarded (and paid for) even when withheld: the violation field says so.
        (Kind::Metered, Some(c)) => Llm {
            model: Some(exit.model.to_owned()),
            served_model: exit.served_model.map(str::to_owned),
            served_provider: exit.served_provider.map(str::to_owned),
            status: exit.status,
            reason: "forwarded".to_owned(),
            charged_micros: c.charged.0,
            overcharge_micros: c.overcharge.0,
            violation: exit.violation.map(|v| v.kind.as_str().to_owned()),
        },
        _ => return,
    };
    evidence.llm(record);
}
