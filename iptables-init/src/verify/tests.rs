#![allow(clippy::unwrap_used)]

use super::judge::*;
use super::listen::{Arrival, Port};
use super::probe::{TcpOutcome, UdpOutcome, Who};
use super::{Config, Privileges, identities};
use std::net::SocketAddr;

fn dst() -> SocketAddr {
    "192.0.2.1:443".parse().unwrap()
}

fn arrival(port: Port, orig: &str) -> Arrival {
    Arrival {
        port,
        token: "t".into(),
        orig_dst: Some(orig.parse().unwrap()),
    }
}

fn failed(v: &Verdict) -> Option<Check> {
    match v {
        Verdict::Fail(c, _) => Some(*c),
        _ => None,
    }
}

#[test]
fn redirect_passes_only_with_the_right_port_and_original_destination() {
    let ok = judge_redirect(
        Port::Sni,
        15443,
        dst(),
        &TcpOutcome::Connected,
        Some(&arrival(Port::Sni, "192.0.2.1:443")),
        None,
    );
    assert!(matches!(ok, Verdict::Pass(_)), "{ok:?}");

    let wrong_port = judge_redirect(
        Port::Sni,
        15443,
        dst(),
        &TcpOutcome::Connected,
        Some(&arrival(Port::Capture, "192.0.2.1:443")),
        None,
    );
    assert_eq!(failed(&wrong_port), Some(Check::SniRedirect));

    let wrong_dst = judge_redirect(
        Port::Capture,
        15001,
        dst(),
        &TcpOutcome::Connected,
        Some(&arrival(Port::Capture, "127.0.0.1:15001")),
        None,
    );
    assert_eq!(failed(&wrong_dst), Some(Check::OriginalDst));

    for o in [
        TcpOutcome::Refused,
        TcpOutcome::TimedOut,
        TcpOutcome::Connected,
        TcpOutcome::Failed("EHOSTUNREACH".into()),
    ] {
        assert_eq!(
            failed(&judge_redirect(Port::Capture, 15001, dst(), &o, None, None)),
            Some(Check::CaptureRedirect),
            "{o:?}"
        );
    }
}

#[test]
fn no_route_is_a_skip_never_a_pass() {
    let o = TcpOutcome::NoRoute("ENETUNREACH".into());
    assert!(
        matches!(judge_redirect(Port::Sni, 15443, dst(), &o, None, None), Verdict::Skip(s) if s.contains("no route"))
    );
    assert!(matches!(
        judge_exempt(dst(), &o, None, false),
        Verdict::Skip(_)
    ));
    assert!(matches!(
        judge_udp(dst(), &UdpOutcome::NoRoute("x".into())),
        Verdict::Skip(_)
    ));
}

#[test]
fn live_mode_needs_the_running_listener_to_accept() {
    let pass = judge_redirect(
        Port::Sni,
        15443,
        dst(),
        &TcpOutcome::Connected,
        None,
        Some(Some(1337)),
    );
    assert!(
        matches!(&pass, Verdict::Pass(s) if s.contains("uid 1337") && s.contains("live")),
        "{pass:?}"
    );
    let fail = judge_redirect(
        Port::Sni,
        15443,
        dst(),
        &TcpOutcome::TimedOut,
        None,
        Some(None),
    );
    assert_eq!(failed(&fail), Some(Check::SniRedirect));
}

#[test]
fn proxy_probe_must_not_arrive() {
    assert!(matches!(
        judge_exempt(dst(), &TcpOutcome::Refused, None, false),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        judge_exempt(dst(), &TcpOutcome::TimedOut, None, true),
        Verdict::Pass(_)
    ));
    let arrived = judge_exempt(
        dst(),
        &TcpOutcome::Connected,
        Some(&arrival(Port::Sni, "192.0.2.1:443")),
        false,
    );
    assert_eq!(failed(&arrived), Some(Check::ProxyExemption));
    assert_eq!(
        failed(&judge_exempt(dst(), &TcpOutcome::Connected, None, true)),
        Some(Check::ProxyExemption)
    );
}

#[test]
fn udp_must_be_rejected_with_eperm() {
    assert!(matches!(
        judge_udp(dst(), &UdpOutcome::Rejected),
        Verdict::Pass(_)
    ));
    assert_eq!(
        failed(&judge_udp(dst(), &UdpOutcome::Sent)),
        Some(Check::Udp)
    );
    assert_eq!(
        failed(&judge_udp(dst(), &UdpOutcome::Failed("EACCES".into()))),
        Some(Check::Udp)
    );
}

#[test]
fn probe_identities_avoid_the_proxy_ids() {
    let args =
        <crate::cli::Args as clap::Parser>::try_parse_from(["t", "--proxy-uid", "65534"]).unwrap();
    let cfg = Config::from_args(&args, || false).unwrap();
    let root = Privileges {
        euid: 0,
        effective: u64::MAX,
    };
    let (agent, proxy) = identities(&cfg, &root);
    assert_eq!(
        agent,
        Some(Who {
            uid: 65533,
            gid: 65534
        })
    );
    // Crossed: the agent probes carry the proxy's number as GID, the proxy probe another.
    assert_eq!(
        proxy,
        Some(Who {
            uid: 65534,
            gid: 65533
        })
    );
    let init_container = Privileges {
        euid: 0,
        effective: (1 << 12) | (1 << 13),
    };
    assert_eq!(identities(&cfg, &init_container), (None, None));
}
