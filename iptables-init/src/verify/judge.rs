//! The verdicts: pure functions from what a probe saw to pass, skip or fail (unit-tested in
//! `verify/tests.rs`), what a check concluded (the checks themselves: `crate::check`).

use std::net::SocketAddr;

use super::listen::{Arrival, Port};
use super::probe::{TcpOutcome, UdpOutcome};
pub use crate::check::Check;

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Held, with what was seen.
    Pass(String),
    /// Could not be exercised, and why.
    Skip(String),
    /// Failed.
    Fail(Check, String),
}

pub(super) fn no_route(dst: SocketAddr, e: &str) -> Verdict {
    Verdict::Skip(format!(
        "no route to {dst} ({e}): routing refused it before netfilter, not exercised"
    ))
}

/// Judges a probe that must be redirected to `port` (`busy`: the port was taken, probed live).
pub fn judge_redirect(
    port: Port,
    port_number: u16,
    dst: SocketAddr,
    outcome: &TcpOutcome,
    arrival: Option<&Arrival>,
    busy: Option<Option<u32>>,
) -> Verdict {
    let check = match port {
        Port::Sni => Check::SniRedirect,
        Port::Capture => Check::CaptureRedirect,
        Port::Dns => Check::DnsRedirect,
    };
    if let TcpOutcome::NoRoute(e) = outcome {
        return no_route(dst, e);
    }
    if let Some(a) = arrival {
        if a.port != port {
            return Verdict::Fail(
                check,
                format!(
                    "arrived at the {} port, want the {port} port {port_number}",
                    a.port
                ),
            );
        }
        return match a.orig_dst {
            Some(o) if o == dst => Verdict::Pass(format!(
                "redirected to :{port_number}, original destination {o}"
            )),
            Some(o) => Verdict::Fail(
                Check::OriginalDst,
                format!("SO_ORIGINAL_DST is {o}, want {dst}"),
            ),
            None => Verdict::Fail(
                Check::OriginalDst,
                "no SO_ORIGINAL_DST on the accepted connection".into(),
            ),
        };
    }
    match (busy, outcome) {
        (Some(owner), TcpOutcome::Connected) => Verdict::Pass(format!(
            "accepted by the running listener on :{port_number} ({}); live probe, original destination not checked",
            owner.map_or("owner unknown".to_string(), |u| format!("uid {u}"))
        )),
        (Some(_), o) => Verdict::Fail(
            check,
            format!("not redirected to the running listener on :{port_number}: {o}"),
        ),
        (None, TcpOutcome::Connected) => Verdict::Fail(
            check,
            format!(
                "connected, but not to the {port} port {port_number}: something else answered (not redirected)"
            ),
        ),
        (None, o) => Verdict::Fail(check, format!("not redirected to :{port_number}: {o}")),
    }
}

/// Judges the proxy-UID probe, which must not be redirected.
pub fn judge_exempt(
    dst: SocketAddr,
    outcome: &TcpOutcome,
    arrival: Option<&Arrival>,
    sni_busy: bool,
) -> Verdict {
    if let TcpOutcome::NoRoute(e) = outcome {
        return no_route(dst, e);
    }
    if let Some(a) = arrival {
        return Verdict::Fail(
            Check::ProxyExemption,
            format!(
                "redirected to the {} port: the proxy's own connections would loop back into it",
                a.port
            ),
        );
    }
    if sni_busy && *outcome == TcpOutcome::Connected {
        return Verdict::Fail(
            Check::ProxyExemption,
            "connected while the SNI port is served locally: probably redirected".into(),
        );
    }
    Verdict::Pass(format!("not redirected ({outcome})"))
}

/// Judges the UDP probe, which the fence must reject.
pub fn judge_udp(dst: SocketAddr, outcome: &UdpOutcome) -> Verdict {
    match outcome {
        UdpOutcome::Rejected => {
            Verdict::Pass("send failed with EPERM: rejected by the fence".into())
        }
        UdpOutcome::NoRoute(e) => no_route(dst, e),
        UdpOutcome::Sent => Verdict::Fail(
            Check::Udp,
            format!("a datagram to {dst} was sent: not rejected"),
        ),
        UdpOutcome::Failed(e) => Verdict::Fail(
            Check::Udp,
            format!("send failed with {e}, want EPERM from the fence"),
        ),
    }
}

/// Judges the UDP/53 probe, which must land on the DNS port (`busy`: that port is served by the
/// running proxy, whose answer the probe does not wait for).
pub fn judge_dns_udp(
    dst: SocketAddr,
    port_number: u16,
    outcome: &UdpOutcome,
    arrival: Option<&Arrival>,
    busy: bool,
) -> Verdict {
    if let UdpOutcome::NoRoute(e) = outcome {
        return no_route(dst, e);
    }
    match (arrival, outcome) {
        (Some(a), _) if a.port == Port::Dns => {
            Verdict::Pass(format!("redirected to :{port_number}"))
        }
        (None, UdpOutcome::Sent) if busy => Verdict::Skip(format!(
            "sent, and :{port_number} is served by the running proxy: a live UDP probe cannot tell a              redirected datagram from one that left; the rules are checked by `installed rules`"
        )),
        (_, o) => Verdict::Fail(
            Check::DnsRedirect,
            format!("a datagram to {dst} did not reach :{port_number}: {o}"),
        ),
    }
}
