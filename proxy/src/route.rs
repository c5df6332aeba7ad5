//! The routing decision: a pure function of (SNI, original destination, phase, policy).
//!
//! Keeping it pure (no I/O, no clock) makes every routing rule a table-driven unit test, and makes
//! the decision a value the connection logs and counts exactly once.

use std::fmt;
use std::net::SocketAddr;

use tollgate_policy::{Destination, Phase, Policy};

/// Where a connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Terminate TLS and hand the connection to the LLM gateway.
    Intercept,
    /// Copy bytes, opaquely, to the SNI host.
    Tunnel,
    /// Close without forwarding a byte.
    Reject,
}

impl Route {
    /// The route as a log field and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Intercept => "intercept",
            Route::Tunnel => "tunnel",
            Route::Reject => "reject",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A routing outcome: where, why (a bounded, static reason) and which policy rule decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Where the connection goes.
    pub route: Route,
    /// Why, as a short static string (a log field and metric label).
    pub reason: &'static str,
    /// The policy pattern that matched, as written in the policy; `None` when no rule matched.
    pub rule: Option<String>,
}

impl Decision {
    /// A rejection that no policy rule decided (unparseable input, limits, failures).
    pub fn reject(reason: &'static str) -> Self {
        Self {
            route: Route::Reject,
            reason,
            rule: None,
        }
    }

    /// The rule as a log field and metric label: the policy's own text, or `-`.
    pub fn rule_label(&self) -> &str {
        self.rule.as_deref().unwrap_or("-")
    }
}

/// Reasons a decision can carry; shared with the stages that downgrade a route on failure.
pub mod reason {
    /// The host is one the gateway intercepts.
    pub const INTERCEPT: &str = "intercept";
    /// Agent phase, host on the allow list.
    pub const ALLOW_LISTED: &str = "allow-listed";
    /// Agent phase, host not on the allow list.
    pub const NOT_ALLOW_LISTED: &str = "not-allow-listed";
    /// Host on the deny list (either phase).
    pub const DENIED: &str = "denied";
    /// Verification phase, host not denied.
    pub const VERIFICATION_OPEN: &str = "verification-open";
    /// A captured connection that was not redirected: nothing to route it to.
    pub const NO_ORIGINAL_DESTINATION: &str = "no-original-destination";
    /// Cloud metadata endpoints, refused whatever the policy says.
    pub const METADATA: &str = "metadata";
    /// One of the proxy's own ports: would loop, or reach the proxy's internals.
    pub const PROXY_PORT: &str = "proxy-port";
}

/// Cloud metadata endpoints (AWS, GCP, Azure, OpenStack share the v4 one; AWS's IPv6 one).
pub const METADATA_ADDRESSES: [std::net::IpAddr; 2] = [
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254)),
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Decides where a captured (non-SNI-port) connection goes, from its original destination.
///
/// Metadata endpoints and the proxy's own ports are refused first, whatever the policy says;
/// then the deny list; then the phase: agent needs an allow entry, verification passes through.
pub fn decide_capture(
    orig_dst: Option<SocketAddr>,
    phase: Phase,
    policy: &Policy,
    own_ports: &[u16],
) -> Decision {
    let Some(dst) = orig_dst else {
        return Decision::reject(reason::NO_ORIGINAL_DESTINATION);
    };
    let ip = match dst.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(dst.ip(), std::net::IpAddr::V4),
        v4 => v4,
    };
    if METADATA_ADDRESSES.contains(&ip) {
        return Decision::reject(reason::METADATA);
    }
    if own_ports.contains(&dst.port()) {
        return Decision::reject(reason::PROXY_PORT);
    }
    if let Some(rule) = policy.capture.denied(dst) {
        return destination(Route::Reject, reason::DENIED, rule);
    }
    match phase {
        Phase::Agent => match policy.capture.allowed(dst) {
            Some(rule) => destination(Route::Tunnel, reason::ALLOW_LISTED, rule),
            None => Decision::reject(reason::NOT_ALLOW_LISTED),
        },
        Phase::Verification => Decision {
            route: Route::Tunnel,
            reason: reason::VERIFICATION_OPEN,
            rule: policy.capture.allowed(dst).map(ToString::to_string),
        },
    }
}

fn destination(route: Route, reason: &'static str, rule: &Destination) -> Decision {
    Decision {
        route,
        reason,
        rule: Some(rule.to_string()),
    }
}

/// Decides where a connection with this SNI goes. `sni` is already normalised.
///
/// Order matters: interception first (the gateway enforces the LLM policy in every phase), then
/// the deny list (deny always wins over allow), then the phase's own rule.
pub fn decide(sni: &str, _orig_dst: Option<SocketAddr>, phase: Phase, policy: &Policy) -> Decision {
    // The original destination is logged but deliberately not trusted for routing: the tunnel
    // dials the SNI host as the proxy resolves it, so a forged destination gains nothing.
    if let Some(rule) = policy.intercept.find(sni) {
        return matched(Route::Intercept, reason::INTERCEPT, rule);
    }
    if let Some(rule) = policy.deny.find(sni) {
        return matched(Route::Reject, reason::DENIED, rule);
    }
    match phase {
        Phase::Agent => match policy.allow.find(sni) {
            Some(rule) => matched(Route::Tunnel, reason::ALLOW_LISTED, rule),
            None => Decision::reject(reason::NOT_ALLOW_LISTED),
        },
        Phase::Verification => Decision {
            route: Route::Tunnel,
            reason: reason::VERIFICATION_OPEN,
            rule: policy.allow.find(sni).map(ToString::to_string),
        },
    }
}

fn matched(route: Route, reason: &'static str, rule: &impl ToString) -> Decision {
    Decision {
        route,
        reason,
        rule: Some(rule.to_string()),
    }
}

#[cfg(test)]
mod tests;
