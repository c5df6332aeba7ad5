//! Routing through the real binary on loopback: tunnels in both phases (curl h1/h2 and rustls),
//! rejections that never reach the upstream nor answer a byte, intercept hosts, SNI
//! normalisation, malformed hellos, and the non-public-address guard. Each test runs its own
//! proxy and upstream on ephemeral ports.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tollgate_tests::clients::https_get;
use tollgate_tests::eventually;
use tollgate_tests::fixture::{Loopback, SETTLE};
use tollgate_tests::hello::{client_hello, rustls_client_hello};
use tollgate_tests::policy::labels_file_body;

const CONN: &str = "tollgate_connections_total";
const HELLO_FAIL: &str = "tollgate_client_hello_failures_total";

fn assert_fields(log: &Value, expected: &[(&str, &str)]) {
    for (k, v) in expected {
        assert_eq!(log[*k], *v, "field {k} of {log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_phase_allowed_host_tunnels_over_curl_h1_h2_and_rustls() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();

    let h1 = lb
        .curl()
        .get("allowed.test", proxy.sni_addr(), "/")
        .await
        .unwrap();
    assert_eq!(
        (h1.code, h1.body.as_str(), h1.http_version.as_str()),
        (0, "hello from upstream", "1.1"),
        "{h1:?}"
    );
    let h2 = lb
        .curl()
        .http2()
        .get("allowed.test", proxy.sni_addr(), "/")
        .await
        .unwrap();
    assert_eq!(
        (h2.code, h2.body.as_str(), h2.http_version.as_str()),
        (0, "hello from upstream", "2"),
        "{h2:?}"
    );
    let big = https_get(
        proxy.sni_addr(),
        "allowed.test",
        lb.h1.clone(),
        "/bytes/300000",
    )
    .await
    .unwrap();
    assert_eq!((big.status, big.body.len()), (200, 300_000));

    let logs = proxy.wait_for_connection_logs(3, SETTLE).await.unwrap();
    for log in &logs {
        assert_fields(
            log,
            &[
                ("sni", "allowed.test"),
                ("route", "tunnel"),
                ("reason", "allow-listed"),
                ("rule", "allowed.test"),
                ("phase", "agent"),
            ],
        );
        assert!(
            log["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{log}"
        );
        assert!(
            matches!(log["orig_dst"].as_str(), None | Some("-")),
            "not redirected: {log}"
        );
        assert!(log["bytes_up"].as_u64().unwrap() > 0, "{log}");
        assert!(log["duration_ms"].is_u64(), "{log}");
    }
    let down: Vec<u64> = logs
        .iter()
        .map(|l| l["bytes_down"].as_u64().unwrap())
        .collect();
    assert!(
        down.iter().any(|d| *d > 300_000),
        "the big body went downstream: {down:?}"
    );

    assert_eq!(
        proxy
            .metric(CONN, &[("route", "tunnel"), ("reason", "allow-listed")])
            .await
            .unwrap(),
        3.0
    );
    assert_eq!(
        proxy
            .metric_or_zero(CONN, &[("route", "reject")])
            .await
            .unwrap(),
        0.0
    );
    assert!(
        proxy
            .metric(
                "tollgate_tunnel_bytes_total",
                &[("direction", "downstream")]
            )
            .await
            .unwrap()
            > 300_000.0
    );
    assert!(
        proxy
            .metric("tollgate_tunnel_bytes_total", &[("direction", "upstream")])
            .await
            .unwrap()
            > 0.0
    );
    assert_eq!(
        proxy
            .metric("tollgate_connection_duration_seconds_count", &[])
            .await
            .unwrap(),
        3.0
    );
    assert_eq!(
        proxy
            .metric("tollgate_open_connections", &[])
            .await
            .unwrap(),
        0.0
    );
    assert_phase_gauge(&proxy, "agent").await;

    let stats = lb.server.stats();
    assert_eq!(stats.connections(), 3);
    assert!(
        stats
            .snis()
            .iter()
            .all(|s| s.as_deref() == Some("allowed.test")),
        "upstream saw the agent's SNI: {:?}",
        stats.snis()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_phase_rejects_unlisted_and_denied_hosts_without_answering() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();

    // other.test is pinned (so it could be dialed) but not allow-listed.
    let log = lb.assert_rejected(&proxy, "other.test").await.unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "other.test"),
            ("route", "reject"),
            ("reason", "not-allow-listed"),
            ("phase", "agent"),
        ],
    );
    assert_eq!(log["bytes_down"], 0, "{log}");
    let log = lb.assert_rejected(&proxy, "denied.test").await.unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "denied.test"),
            ("route", "reject"),
            ("reason", "denied"),
            ("phase", "agent"),
        ],
    );

    // curl sees a TLS failure, not an HTTP answer.
    let out = lb
        .curl()
        .get("other.test", proxy.sni_addr(), "/")
        .await
        .unwrap();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.body.is_empty(), "{out:?}");

    assert_eq!(
        proxy
            .metric(CONN, &[("route", "reject"), ("reason", "not-allow-listed")])
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(
        proxy
            .metric(CONN, &[("route", "reject"), ("reason", "denied")])
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        proxy
            .metric_or_zero(CONN, &[("route", "tunnel")])
            .await
            .unwrap(),
        0.0
    );
    assert_eq!(lb.server.stats().connections(), 0);

    // The allowed host still works next to them.
    lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();
}

/// In the verification phase every pinned host not denied is open; deny still wins.
async fn assert_verification_routing(lb: &Loopback, proxy: &tollgate_tests::proxy::Proxy) {
    let log = lb.assert_tunnels(proxy, "other.test").await.unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "other.test"),
            ("route", "tunnel"),
            ("reason", "verification-open"),
            ("phase", "verification"),
        ],
    );
    let log = lb.assert_tunnels(proxy, "allowed.test").await.unwrap();
    assert_fields(&log, &[("route", "tunnel"), ("phase", "verification")]);
    let log = lb.assert_rejected(proxy, "denied.test").await.unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "denied.test"),
            ("route", "reject"),
            ("reason", "denied"),
            ("phase", "verification"),
        ],
    );
    let out = lb
        .curl()
        .http2()
        .get("other.test", proxy.sni_addr(), "/")
        .await
        .unwrap();
    assert_eq!(
        (out.code, out.body.as_str(), out.http_version.as_str()),
        (0, "hello from upstream", "2"),
        "{out:?}"
    );

    assert_phase_gauge(proxy, "verification").await;
    assert_eq!(
        proxy
            .metric(
                CONN,
                &[("route", "tunnel"), ("reason", "verification-open")]
            )
            .await
            .unwrap(),
        3.0
    );
    assert_eq!(
        proxy
            .metric(CONN, &[("route", "reject"), ("reason", "denied")])
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_phase_from_labels_file_opens_pinned_hosts_but_keeps_deny() {
    let lb = Loopback::new().await.unwrap();
    let labels = lb.dir.path().join("labels");
    std::fs::write(&labels, labels_file_body(Some("verification"))).unwrap();
    let proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .labels_file(&labels)
        .start()
        .await
        .unwrap();
    assert_verification_routing(&lb, &proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_phase_from_unlock_file_opens_pinned_hosts_but_keeps_deny() {
    let lb = Loopback::new().await.unwrap();
    let unlock = lb.dir.path().join("egress-unlocked");
    std::fs::write(&unlock, b"").unwrap();
    let proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .unlock_file(&unlock)
        .start()
        .await
        .unwrap();
    assert_verification_routing(&lb, &proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_phase_from_policy_file() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy().phase("verification")).await.unwrap();
    assert_verification_routing(&lb, &proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_file_phase_beats_unlock_file() {
    let lb = Loopback::new().await.unwrap();
    let labels = lb.dir.path().join("labels");
    std::fs::write(&labels, labels_file_body(Some("agent"))).unwrap();
    let unlock = lb.dir.path().join("egress-unlocked");
    std::fs::write(&unlock, b"").unwrap();
    let proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .labels_file(&labels)
        .unlock_file(&unlock)
        .start()
        .await
        .unwrap();
    let log = lb.assert_rejected(&proxy, "other.test").await.unwrap();
    assert_fields(&log, &[("reason", "not-allow-listed"), ("phase", "agent")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn intercept_host_is_terminated_with_the_pod_ca_not_tunnelled() {
    // The gateway terminates TLS for intercepted hosts with the per-Pod CA: a client that trusts
    // only the real (here: the test) CA fails the handshake, and nothing reaches an upstream.
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();
    let before = lb.server.stats().connections();
    let tcp = tokio::net::TcpStream::connect(proxy.sni_addr())
        .await
        .unwrap();
    let peer = tcp.local_addr().unwrap();
    let handshake =
        tollgate_tests::clients::tls_handshake(tcp, "openrouter.ai", lb.h1.clone()).await;
    assert!(
        handshake.is_err(),
        "the per-Pod CA must not be trusted by this client"
    );
    let log = proxy.wait_for_peer(peer, SETTLE).await.unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "openrouter.ai"),
            ("route", "intercept"),
            ("reason", "tls-handshake-failed"),
        ],
    );
    assert_eq!(lb.server.stats().connections(), before);
    assert_eq!(
        proxy
            .metric(
                CONN,
                &[("route", "intercept"), ("reason", "tls-handshake-failed")]
            )
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_matches_case_insensitively_and_without_trailing_dot() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();

    // A full exchange with a mixed-case name (certificate names match case-insensitively).
    let log = lb.assert_tunnels(&proxy, "ALLOWED.Test").await.unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "allowed.test"),
            ("route", "tunnel"),
            ("reason", "allow-listed"),
            ("rule", "allowed.test"),
        ],
    );

    // rustls would strip a trailing dot, so send `Allowed.Test.` by hand and look at the route.
    let before = lb.server.stats().connections();
    let mut raw = tollgate_tests::clients::RawClient::connect(proxy.sni_addr())
        .await
        .unwrap();
    let peer = raw.local_addr().unwrap();
    raw.send(&client_hello(Some(b"Allowed.Test.")))
        .await
        .unwrap();
    // The proxy dials the upstream and replays the hello; then we hang up, which ends the tunnel.
    let upstream = lb.server.stats();
    eventually(SETTLE, "the upstream to be dialed", || async {
        (upstream.connections() > before).then_some(())
    })
    .await
    .unwrap();
    drop(raw);
    let log = proxy.wait_for_peer(peer, SETTLE).await.unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "allowed.test"),
            ("route", "tunnel"),
            ("reason", "allow-listed"),
            ("rule", "allowed.test"),
        ],
    );
    assert_eq!(
        lb.server.stats().connections(),
        before + 1,
        "the upstream was dialed"
    );

    // A wildcard rule matches a subdomain.
    let log = lb.assert_tunnels(&proxy, "a.wild.test").await.unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "a.wild.test"),
            ("route", "tunnel"),
            ("reason", "allow-listed"),
            ("rule", "*.wild.test"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_hellos_are_rejected_and_counted_by_reason() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();

    let http = b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
    let log = lb
        .assert_rejected_bytes(&proxy, http, "plain HTTP")
        .await
        .unwrap();
    assert_fields(&log, &[("route", "reject"), ("reason", "not-tls")]);

    let mut no_sni = lb
        .ca
        .client_config_raw(tollgate_tests::pki::ALPN_HTTP11)
        .unwrap();
    no_sni.enable_sni = false;
    let hello = rustls_client_hello(std::sync::Arc::new(no_sni), "allowed.test").unwrap();
    let log = lb
        .assert_rejected_bytes(&proxy, &hello, "hello without SNI")
        .await
        .unwrap();
    assert_fields(&log, &[("route", "reject"), ("reason", "no-sni")]);

    for literal in [&b"127.0.0.1"[..], b"192.0.2.7", b"::1", b"2001:db8::7"] {
        let what = format!("IP-literal SNI {}", String::from_utf8_lossy(literal));
        let log = lb
            .assert_rejected_bytes(&proxy, &client_hello(Some(literal)), &what)
            .await
            .unwrap();
        assert_fields(&log, &[("route", "reject"), ("reason", "ip-literal-sni")]);
    }

    for (reason, n) in [("not-tls", 1.0), ("no-sni", 1.0), ("ip-literal-sni", 4.0)] {
        assert_eq!(
            proxy
                .metric(HELLO_FAIL, &[("reason", reason)])
                .await
                .unwrap(),
            n,
            "{HELLO_FAIL}{{reason={reason}}}"
        );
        assert_eq!(
            proxy
                .metric(CONN, &[("route", "reject"), ("reason", reason)])
                .await
                .unwrap(),
            n,
            "{CONN}{{reason={reason}}}"
        );
    }
    assert_eq!(lb.server.stats().connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_loopback_without_allowance_is_refused_as_non_public() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();
    let log = lb.assert_rejected(&proxy, "nonpublic.test").await.unwrap();
    assert_fields(
        &log,
        &[("sni", "nonpublic.test"), ("reason", "non-public-address")],
    );
    assert_eq!(
        proxy
            .metric(CONN, &[("reason", "non-public-address")])
            .await
            .unwrap(),
        1.0
    );
    // The same upstream is fine for a host whose rule names the loopback range.
    lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_pinned_upstream_closes_as_connect_failed() {
    let lb = Loopback::new().await.unwrap();
    // A port that was just free: nothing listens there.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = lb
        .policy()
        .allow(&["dead.test"])
        .pin_loopback("dead.test", dead_port);
    let proxy = lb.proxy(&spec).await.unwrap();
    let log = lb.assert_rejected(&proxy, "dead.test").await.unwrap();
    assert_fields(&log, &[("sni", "dead.test"), ("reason", "connect-failed")]);
    assert_eq!(
        proxy
            .metric(CONN, &[("reason", "connect-failed")])
            .await
            .unwrap(),
        1.0
    );
}

/// The phase gauge is 1 for `current` and 0 for the other phase.
async fn assert_phase_gauge(proxy: &tollgate_tests::proxy::Proxy, current: &str) {
    for phase in ["agent", "verification"] {
        let want = if phase == current { 1.0 } else { 0.0 };
        let got = proxy
            .metric("tollgate_phase", &[("phase", phase)])
            .await
            .unwrap();
        assert_eq!(got, want, "tollgate_phase{{phase={phase}}}");
    }
}

/// A real Chromium first flight (SNI `pq.example.test`): Chromium adds an ECH GREASE extension
/// (0xfe0d) to every hello by default, indistinguishable from real ECH on the wire.
const CHROMIUM_HELLO: &[u8] =
    include_bytes!("../../../proxy/src/client_hello/fixtures/chromium_pq.bin");

/// Sends `bytes` and waits until the proxy dialled the upstream (the tunnel is up); hangs up and
/// returns the connection's log line.
async fn assert_dials_upstream(
    lb: &Loopback,
    proxy: &tollgate_tests::proxy::Proxy,
    bytes: &[u8],
) -> Value {
    let before = lb.server.stats().connections();
    let mut raw = tollgate_tests::clients::RawClient::connect(proxy.sni_addr())
        .await
        .unwrap();
    let peer = raw.local_addr().unwrap();
    raw.send(bytes).await.unwrap();
    let upstream = lb.server.stats();
    eventually(SETTLE, "the upstream to be dialed", || async {
        (upstream.connections() > before).then_some(())
    })
    .await
    .unwrap();
    drop(raw);
    proxy.wait_for_peer(peer, SETTLE).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ech_and_esni_hellos_are_refused_unless_the_host_opts_in() {
    use tollgate_tests::hello::{EXT_ECH, EXT_ESNI, append_extension, ech_outer_extension};
    let lb = Loopback::new().await.unwrap();
    let port = lb.server.port();
    let spec = lb
        .policy()
        .allow(&["pq.example.test", "cdn.wild.test"])
        .pin_loopback("pq.example.test", port)
        .pin_loopback("cdn.wild.test", port)
        .ech("cdn.wild.test");
    let proxy = lb.proxy(&spec).await.unwrap();
    let rustls = |sni: &str| rustls_client_hello(lb.h1.clone(), sni).unwrap();
    let ech = ech_outer_extension();

    // A real rustls hello for an allow-listed host, plus ECH: the outer SNI is allowed, the real
    // destination is hidden. Refused without a byte, never dialled.
    let with_ech = append_extension(&rustls("allowed.test"), EXT_ECH, &ech).unwrap();
    let log = lb
        .assert_rejected_bytes(&proxy, &with_ech, "ECH to allowed.test")
        .await
        .unwrap();
    assert_fields(
        &log,
        &[
            ("sni", "allowed.test"),
            ("route", "reject"),
            ("reason", "ech"),
            ("rule", "allowed.test"),
        ],
    );
    assert!(
        log["error"]
            .as_str()
            .unwrap()
            .contains("encrypted_client_hello"),
        "{log}"
    );
    // The ESNI drafts' extension likewise.
    let with_esni = append_extension(&rustls("allowed.test"), EXT_ESNI, &[0; 40]).unwrap();
    let log = lb
        .assert_rejected_bytes(&proxy, &with_esni, "ESNI to allowed.test")
        .await
        .unwrap();
    assert_fields(&log, &[("reason", "ech")]);
    assert!(
        log["error"]
            .as_str()
            .unwrap()
            .contains("encrypted_server_name"),
        "{log}"
    );
    // Chromium's default hello (ECH GREASE) is refused too: the documented price of the default.
    let log = lb
        .assert_rejected_bytes(&proxy, CHROMIUM_HELLO, "Chromium's hello")
        .await
        .unwrap();
    assert_fields(&log, &[("sni", "pq.example.test"), ("reason", "ech")]);

    // The same hellos without the extension still tunnel.
    lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();

    // A host that opts in (`ech = true`) is tunnelled with ECH.
    let with_ech = append_extension(&rustls("cdn.wild.test"), EXT_ECH, &ech).unwrap();
    let log = assert_dials_upstream(&lb, &proxy, &with_ech).await;
    assert_fields(
        &log,
        &[
            ("sni", "cdn.wild.test"),
            ("route", "tunnel"),
            ("reason", "allow-listed"),
        ],
    );

    // An intercepted host is terminated by the gateway, so ECH hides nothing there: not refused.
    let with_ech = append_extension(&rustls("openrouter.ai"), EXT_ECH, &ech).unwrap();
    let mut raw = tollgate_tests::clients::RawClient::connect(proxy.sni_addr())
        .await
        .unwrap();
    let peer = raw.local_addr().unwrap();
    raw.send(&with_ech).await.unwrap();
    // The gateway answers with its ServerHello (a handshake record); then we hang up.
    let mut stream = raw.into_inner();
    let mut header = [0u8; 5];
    tokio::time::timeout(SETTLE, stream.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header[0], 0x16, "a handshake record from the gateway");
    drop(stream);
    let log = proxy.wait_for_peer(peer, SETTLE).await.unwrap();
    assert_fields(&log, &[("sni", "openrouter.ai"), ("route", "intercept")]);

    for (name, labels) in [
        (HELLO_FAIL, &[("reason", "ech")][..]),
        (CONN, &[("route", "reject"), ("reason", "ech")][..]),
    ] {
        assert_eq!(
            proxy.metric(name, labels).await.unwrap(),
            3.0,
            "{name}{labels:?}"
        );
    }
}
