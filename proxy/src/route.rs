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
    /// Why (a log field and metric label).
    pub reason: Reason,
    /// The policy pattern that matched, as written in the policy; `None` when no rule matched.
    pub rule: Option<String>,
}

impl Decision {
    /// A rejection that no policy rule decided (unparseable input, limits, failures).
    pub fn reject(reason: Reason) -> Self {
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

/// Why a connection went where it went, or ended as it did: one variant per cause (a log field
/// and metric label). Route decisions come first, then what later stages report (accept, tunnel
/// dial, the gateway), and a ClientHello failure carries [`HelloError::reason`](crate::client_hello::HelloError::reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The host is one the gateway intercepts.
    Intercept,
    /// Agent phase, host on the allow list.
    AllowListed,
    /// Agent phase, host not on the allow list.
    NotAllowListed,
    /// Host on the deny list (either phase).
    Denied,
    /// Verification phase, host not denied.
    VerificationOpen,
    /// A captured connection that was not redirected: nothing to route it to.
    NoOriginalDestination,
    /// Cloud metadata and agent endpoints, refused whatever the policy says.
    Metadata,
    /// A non-public destination (the Pod, the node, the cluster) the policy does not open; the
    /// tunnel's dial failure for resolved addresses carries the same reason.
    NonPublicAddress,
    /// A ClientHello that carries Encrypted Client Hello (or the older ESNI) for a host whose
    /// policy does not opt in: the outer SNI would not name the real destination.
    Ech,
    /// One of the proxy's own ports: would loop, or reach the proxy's internals.
    ProxyPort,
    /// More connections open than `--max-connections` allows: refused at accept.
    ConnectionLimit,
    /// The tunnel's resolver failed or returned nothing.
    ResolveFailed,
    /// Connecting failed on every permitted address.
    ConnectFailed,
    /// The tunnel's connect timeout ran out.
    ConnectTimeout,
    /// The gateway served the intercepted connection (its requests have their own lines).
    Intercepted,
    /// More intercepted connections open than `--max-intercepted-connections` allows.
    InterceptLimit,
    /// No gateway is plugged in: intercepted connections are closed.
    InterceptUnavailable,
    /// The gateway's TLS handshake failed.
    TlsHandshakeFailed,
    /// The gateway's TLS handshake took too long.
    TlsHandshakeTimeout,
    /// The ClientHello could not be read: `HelloError::reason()` (`not-tls`, `timeout`, ...).
    Hello(&'static str),
}

impl Reason {
    /// Every reason but the ClientHello failures (those are `HelloError`'s).
    pub const ALL: [Reason; 19] = [
        Reason::Intercept,
        Reason::AllowListed,
        Reason::NotAllowListed,
        Reason::Denied,
        Reason::VerificationOpen,
        Reason::NoOriginalDestination,
        Reason::Metadata,
        Reason::NonPublicAddress,
        Reason::Ech,
        Reason::ProxyPort,
        Reason::ConnectionLimit,
        Reason::ResolveFailed,
        Reason::ConnectFailed,
        Reason::ConnectTimeout,
        Reason::Intercepted,
        Reason::InterceptLimit,
        Reason::InterceptUnavailable,
        Reason::TlsHandshakeFailed,
        Reason::TlsHandshakeTimeout,
    ];

    /// The log field and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Intercept => "intercept",
            Reason::AllowListed => "allow-listed",
            Reason::NotAllowListed => "not-allow-listed",
            Reason::Denied => "denied",
            Reason::VerificationOpen => "verification-open",
            Reason::NoOriginalDestination => "no-original-destination",
            Reason::Metadata => "metadata",
            Reason::NonPublicAddress => "non-public-address",
            Reason::Ech => "ech",
            Reason::ProxyPort => "proxy-port",
            Reason::ConnectionLimit => "connection-limit",
            Reason::ResolveFailed => "resolve-failed",
            Reason::ConnectFailed => "connect-failed",
            Reason::ConnectTimeout => "connect-timeout",
            Reason::Intercepted => "intercepted",
            Reason::InterceptLimit => "intercept-limit",
            Reason::InterceptUnavailable => "intercept-unavailable",
            Reason::TlsHandshakeFailed => "tls-handshake-failed",
            Reason::TlsHandshakeTimeout => "tls-handshake-timeout",
            Reason::Hello(reason) => reason,
        }
    }
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
        return Decision::reject(Reason::NoOriginalDestination);
    };
    // `::ffff:a.b.c.d` is IPv4 on the wire: match it against IPv4 entries, so that neither a
    // deny entry nor an allow entry depends on how the address was spelt.
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    if address::is_cloud_metadata(dst.ip()) {
        return Decision::reject(Reason::Metadata);
    }
    if own_ports.contains(&dst.port()) {
        return Decision::reject(Reason::ProxyPort);
    }
    if let Some(rule) = policy.capture.denied(dst) {
        return destination(Route::Reject, Reason::Denied, rule);
    }
    let allowed = policy.capture.allowed(dst);
    if allowed.is_none() && address::non_public_kind(dst.ip()).is_some() {
        return Decision::reject(Reason::NonPublicAddress);
    }
    match phase {
        Phase::Agent => match allowed {
            Some(rule) => destination(Route::Tunnel, Reason::AllowListed, rule),
            None => Decision::reject(Reason::NotAllowListed),
        },
        Phase::Verification => Decision {
            route: Route::Tunnel,
            reason: Reason::VerificationOpen,
            rule: allowed.map(ToString::to_string),
        },
    }
}

fn destination(route: Route, reason: Reason, rule: &Destination) -> Decision {
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
        return matched(Route::Intercept, Reason::Intercept, rule);
    }
    if let Some(rule) = policy.deny.find(sni) {
        return matched(Route::Reject, Reason::Denied, rule);
    }
    match phase {
        Phase::Agent => match policy.allow.find(sni) {
            Some(rule) => matched(Route::Tunnel, Reason::AllowListed, rule),
            None => Decision::reject(Reason::NotAllowListed),
        },
        Phase::Verification => Decision {
            route: Route::Tunnel,
            reason: Reason::VerificationOpen,
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
            reason: Reason::Ech,
            ..decision
        };
    }
    decision
}

fn matched(route: Route, reason: Reason, rule: &impl ToString) -> Decision {
    Decision {
        route,
        reason,
        rule: Some(rule.to_string()),
    }
}

#[cfg(test)]
mod tests;
