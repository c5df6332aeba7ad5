//! The routing decision: a pure function of (ClientHello, original destination, phase, policy),
//! or, for captured connections, of (original destination, phase, policy, the proxy's own ports).
//!
//! Keeping it pure (no I/O, no clock) makes every routing rule a table-driven unit test, and makes
//! the decision a value the connection logs and counts exactly once.

use std::fmt;
use std::net::SocketAddr;

use tollgate_policy::{Destination, Phase, Policy};

use crate::client_hello::ClientHello;
use crate::tunnel::address;

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
    /// Cloud metadata and agent endpoints, refused whatever the policy says.
    pub const METADATA: &str = "metadata";
    /// A non-public destination (the Pod, the node, the cluster) the policy does not open; the
    /// tunnel's dial failure for resolved addresses carries the same reason.
    pub const NON_PUBLIC_ADDRESS: &str = "non-public-address";
    /// A ClientHello that carries Encrypted Client Hello (or the older ESNI) for a host whose
    /// policy does not opt in: the outer SNI would not name the real destination.
    pub const ECH: &str = "ech";
    /// One of the proxy's own ports: would loop, or reach the proxy's internals.
    pub const PROXY_PORT: &str = "proxy-port";
}

/// Decides where a captured (non-SNI-port) connection goes, from its original destination.
///
/// In order: cloud metadata and agent endpoints, then the proxy's own ports, are refused whatever
/// the policy says; then the deny list; then any non-public destination (private, loopback,
/// link-local, CGNAT, ULA...: the Pod, the node, the cluster) that no `[capture] allow` entry
/// names, in both phases, exactly as the tunnel filters resolved addresses; then the phase: agent
/// needs an allow entry, verification passes through.
pub fn decide_capture(
    orig_dst: Option<SocketAddr>,
    phase: Phase,
    policy: &Policy,
    own_ports: &[u16],
) -> Decision {
    let Some(dst) = orig_dst else {
        return Decision::reject(reason::NO_ORIGINAL_DESTINATION);
    };
    // `::ffff:a.b.c.d` is IPv4 on the wire: match it against IPv4 entries, so that neither a
    // deny entry nor an allow entry depends on how the address was spelt.
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    if address::is_cloud_metadata(dst.ip()) {
        return Decision::reject(reason::METADATA);
    }
    if own_ports.contains(&dst.port()) {
        return Decision::reject(reason::PROXY_PORT);
    }
    if let Some(rule) = policy.capture.denied(dst) {
        return destination(Route::Reject, reason::DENIED, rule);
    }
    let allowed = policy.capture.allowed(dst);
    if allowed.is_none() && address::non_public_kind(dst.ip()).is_some() {
        return Decision::reject(reason::NON_PUBLIC_ADDRESS);
    }
    match phase {
        Phase::Agent => match allowed {
            Some(rule) => destination(Route::Tunnel, reason::ALLOW_LISTED, rule),
            None => Decision::reject(reason::NOT_ALLOW_LISTED),
        },
        Phase::Verification => Decision {
            route: Route::Tunnel,
            reason: reason::VERIFICATION_OPEN,
            rule: allowed.map(ToString::to_string),
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

/// [`decide`] for a parsed ClientHello, then the ECH screen: a hello carrying ECH (or ESNI) names
/// its real destination only inside the encryption, so tunnelling it on the outer SNI would let
/// the agent reach any host behind the same client-facing server (domain fronting by design).
/// Such a tunnel is refused unless the outer SNI's `[hosts]` rule opts in with `ech = true`.
///
/// Intercepted hosts are not screened: the gateway terminates TLS itself, so the hidden name never
/// reaches anyone. Chromium's default ECH GREASE looks exactly like real ECH and is refused too
/// (README "ECH and domain fronting" says why and what to do).
pub fn decide_hello(
    hello: &ClientHello,
    orig_dst: Option<SocketAddr>,
    phase: Phase,
    policy: &Policy,
) -> Decision {
    let decision = decide(&hello.sni, orig_dst, phase, policy);
    let opted_in = || policy.host_rule(&hello.sni).is_some_and(|rule| rule.ech);
    if decision.route == Route::Tunnel && hello.encrypted.is_some() && !opted_in() {
        return Decision {
            route: Route::Reject,
            reason: reason::ECH,
            ..decision
        };
    }
    decision
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
