//! The capture router (`:15001`) through the real binary, inside a fresh network namespace (root
//! only): an "agent" socket with source 192.0.2.1 / 2001:db8::1 connects to port 9000 (or the
//! usage port) anywhere, an iptables REDIRECT sends it to the capture listener, and tollgate
//! decides by the original destination. Every destination lives on a veth pair inside the
//! namespace, listening and answering a banner, so a connection that should have been refused
//! shows up as a banner received.
//!
//! The point (issue 8, item 2): in the verification phase captured connections pass through to
//! public destinations only. Private, CGNAT, ULA, benchmarking addresses (the node's kubelet, other
//! namespaces' Services) need an explicit `[capture] allow`, and cloud metadata/agent endpoints
//! (EKS Pod Identity, Azure WireServer) and tollgate's own ports (the usage port included) are
//! refused whatever the policy says.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use tollgate_tests::fixture::SETTLE;
use tollgate_tests::netns::{Netns, V4_A, V4_B, V6_A, sock};
use tollgate_tests::policy::PolicySpec;
use tollgate_tests::proxy::Proxy;
use tollgate_tests::require_root;

const PORT: u16 = 9000;
/// The proxy's usage port inside the namespace (fixed: the namespace is the test's own).
const USAGE_PORT: u16 = 18080;
const CAPTURE_PORT: u16 = 15001;

/// Addresses put on the veth pair besides the TEST-NET ones, with what tollgate must do with a
/// captured connection to them in the verification phase: `None` = pass, else the reason.
const DESTINATIONS: &[(&str, Option<&str>)] = &[
    // The world (TEST-NET is public to tollgate, see tunnel/address.rs).
    ("192.0.2.2", None),
    ("2001:db8::2", None),
    // Named by `[capture] allow`: a database in the cluster the operator opened.
    ("172.20.0.2", None),
    // The node, the cluster, the carrier network, a ULA, the benchmarking range.
    ("10.99.0.2", Some("non-public-address")),
    ("100.64.0.2", Some("non-public-address")),
    ("198.18.0.2", Some("non-public-address")),
    ("fd00:99::2", Some("non-public-address")),
    // Cloud agents: EKS Pod Identity (v4 and v6) and Azure WireServer (a public address).
    ("169.254.170.23", Some("metadata")),
    ("fd00:ec2::23", Some("metadata")),
    ("168.63.129.16", Some("metadata")),
];

/// A banner server: answers every connection with `hello from <local addr>` and records it.
struct Banner {
    seen: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Banner {
    fn start(listeners: Vec<TcpListener>) -> Banner {
        let seen = Arc::new(Mutex::new(Vec::new()));
        for listener in listeners {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for mut conn in listener.incoming().flatten() {
                    let local = conn.local_addr().unwrap();
                    seen.lock().unwrap().push(local);
                    let _ = conn.write_all(format!("hello from {local}").as_bytes());
                }
            });
        }
        Banner { seen }
    }

    fn reached(&self, ip: IpAddr) -> bool {
        self.seen.lock().unwrap().iter().any(|a| a.ip() == ip)
    }
}

fn iptables(ns: &Netns, tool: &str, src: &str) {
    let ports = format!("{PORT},{USAGE_PORT}");
    let to = CAPTURE_PORT.to_string();
    ns.exec(&[
        tool,
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-s",
        src,
        "-m",
        "multiport",
        "--dports",
        &ports,
        "-j",
        "REDIRECT",
        "--to-ports",
        &to,
    ])
    .unwrap();
}

/// Connects as the agent (source `.1`) to `dst` and reads until the proxy or the destination
/// closes; returns the bytes received and the proxy's log line for the connection.
async fn agent_connect(ns: &Netns, proxy: &Proxy, dst: SocketAddr) -> (String, serde_json::Value) {
    let src: IpAddr = if dst.is_ipv4() {
        V4_A.into()
    } else {
        V6_A.into()
    };
    let mut stream = ns.connect_tcp_from(src, dst).unwrap();
    let peer = stream.local_addr().unwrap();
    stream.set_read_timeout(Some(SETTLE)).unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    // A tunnel ends (and logs) when both sides are done: hang up first.
    drop(stream);
    let log = proxy.wait_for_peer(peer, SETTLE).await.unwrap();
    (String::from_utf8_lossy(&received).into_owned(), log)
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_phase_capture_reaches_only_public_or_allowed_destinations() {
    if !require_root() {
        return;
    }
    let ns = Netns::new().unwrap();
    let veth = ns.veth().unwrap();
    let mut listeners = Vec::new();
    for (addr, _) in DESTINATIONS {
        let ip: IpAddr = addr.parse().unwrap();
        if !matches!(*addr, "192.0.2.2" | "2001:db8::2") {
            let (prefix, family) = if ip.is_ipv4() {
                (32, "-4")
            } else {
                (128, "-6")
            };
            let cidr = format!("{ip}/{prefix}");
            let mut args = vec![family, "addr", "add", &cidr, "dev", &veth.b];
            if ip.is_ipv6() {
                args.push("nodad");
            }
            ns.ip(&args).unwrap();
        }
        listeners.push(ns.bind_tcp(sock(ip, PORT)).unwrap());
    }
    // Something answers on the usage port number at a public address too: if tollgate passed a
    // connection to its own port through, this would answer.
    listeners.push(ns.bind_tcp(sock(IpAddr::from(V4_B), USAGE_PORT)).unwrap());
    let banner = Banner::start(listeners);

    iptables(&ns, "iptables", &V4_A.to_string());
    iptables(&ns, "ip6tables", &V6_A.to_string());

    let dir = tempfile::Builder::new()
        .prefix("tollgate-capture-")
        .tempdir()
        .unwrap();
    let policy = dir.path().join("policy.toml");
    PolicySpec::new()
        .phase("verification")
        .raw(&format!(
            "[capture]\nallow = [{{ cidr = \"172.20.0.0/16\", ports = [{PORT}] }}]"
        ))
        .write(&policy)
        .unwrap();
    let proxy = Proxy::builder()
        .netns(ns.name())
        .capture_listen(&format!("127.0.0.1:{CAPTURE_PORT}"))
        .capture_listen(&format!("[::1]:{CAPTURE_PORT}"))
        .arg("--usage-listen")
        .arg(format!("127.0.0.1:{USAGE_PORT}"))
        .policy(&policy)
        .start()
        .await
        .unwrap();

    // The usage port is one of tollgate's own: refused even at a public address.
    let dst = sock(IpAddr::from(V4_B), USAGE_PORT);
    let (received, log) = agent_connect(&ns, &proxy, dst).await;
    assert_eq!(received, "", "{log}");
    assert_eq!(log["reason"], "proxy-port", "{log}");

    for &(addr, refused) in DESTINATIONS {
        let ip: IpAddr = addr.parse().unwrap();
        let dst = sock(ip, PORT);
        let (received, log) = agent_connect(&ns, &proxy, dst).await;
        assert_eq!(log["listener"], "capture", "{log}");
        assert_eq!(log["orig_dst"], dst.to_string(), "{log}");
        match refused {
            None => {
                assert_eq!(received, format!("hello from {dst}"), "{dst}: {log}");
                assert_eq!(log["route"], "tunnel", "{log}");
            }
            Some(reason) => {
                assert_eq!(received, "", "{dst} must not be reached: {log}");
                assert_eq!(
                    (log["route"].as_str(), log["reason"].as_str()),
                    (Some("reject"), Some(reason)),
                    "{dst}: {log}"
                );
                assert!(!banner.reached(ip), "{dst} was dialled");
            }
        }
    }
    let log = agent_connect(&ns, &proxy, sock(ip("172.20.0.2"), PORT))
        .await
        .1;
    assert_eq!(log["rule"], format!("172.20.0.0/16 ports {PORT}"), "{log}");
    let log = agent_connect(&ns, &proxy, sock(ip("10.99.0.2"), PORT))
        .await
        .1;
    assert!(
        log["error"]
            .as_str()
            .unwrap()
            .contains("10.99.0.2 is private"),
        "{log}"
    );

    for (reason, n) in [
        ("non-public-address", 5.0),
        ("metadata", 3.0),
        ("proxy-port", 1.0),
    ] {
        assert_eq!(
            proxy
                .metric("tollgate_capture_rejections_total", &[("reason", reason)])
                .await
                .unwrap(),
            n,
            "capture rejections for {reason}"
        );
    }
    assert_eq!(
        proxy
            .metric(
                "tollgate_connections_total",
                &[("route", "reject"), ("reason", "non-public-address")]
            )
            .await
            .unwrap(),
        5.0
    );
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_allow_cannot_open_metadata_and_agent_phase_needs_an_allow_entry() {
    if !require_root() {
        return;
    }
    let ns = Netns::new().unwrap();
    let veth = ns.veth().unwrap();
    ns.ip(&["addr", "add", "169.254.170.23/32", "dev", &veth.b])
        .unwrap();
    let listeners = vec![
        ns.bind_tcp(sock(ip("169.254.170.23"), PORT)).unwrap(),
        ns.bind_tcp(sock(IpAddr::from(V4_B), PORT)).unwrap(),
    ];
    let banner = Banner::start(listeners);
    iptables(&ns, "iptables", &V4_A.to_string());

    let dir = tempfile::Builder::new()
        .prefix("tollgate-capture-")
        .tempdir()
        .unwrap();
    let policy = dir.path().join("policy.toml");
    // Agent phase; the allow list names the metadata range and one public destination.
    PolicySpec::new()
        .raw(&format!(
            "[capture]\nallow = [{{ cidr = \"169.254.0.0/16\" }}, {{ cidr = \"192.0.2.2\", ports = [{PORT}] }}]"
        ))
        .write(&policy)
        .unwrap();
    let proxy = Proxy::builder()
        .netns(ns.name())
        .capture_listen(&format!("127.0.0.1:{CAPTURE_PORT}"))
        .policy(&policy)
        .start()
        .await
        .unwrap();

    let (received, log) = agent_connect(&ns, &proxy, sock(ip("169.254.170.23"), PORT)).await;
    assert_eq!(received, "", "{log}");
    assert_eq!(log["reason"], "metadata", "{log}");
    assert!(!banner.reached(ip("169.254.170.23")));

    let dst = sock(IpAddr::from(V4_B), PORT);
    let (received, log) = agent_connect(&ns, &proxy, dst).await;
    assert_eq!(received, format!("hello from {dst}"), "{log}");
    assert_eq!(
        (log["route"].as_str(), log["reason"].as_str()),
        (Some("tunnel"), Some("allow-listed")),
        "{log}"
    );
}
