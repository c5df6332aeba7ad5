//! Resource limits at the front door: the connection cap, the ClientHello deadline against
//! slow-drip clients, and the ClientHello size cap; plus hellos that are legal but awkward
//! (many small TCP segments, many records, close to the size cap) still route.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tollgate_tests::clients::{HttpConn, RawClient, Trickle, tls_handshake};
use tollgate_tests::eventually;
use tollgate_tests::fixture::{Loopback, SETTLE};
use tollgate_tests::hello::{MAX_FRAGMENT, client_hello_message, rustls_client_hello, tls_records};

const HELLO_FAIL: &str = "tollgate_client_hello_failures_total";
const CONN: &str = "tollgate_connections_total";

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_refuses_the_third_and_recovers() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .arg("--max-connections")
        .arg("2")
        .start()
        .await
        .unwrap();

    let mut first = HttpConn::connect(proxy.sni_addr(), "allowed.test", lb.h1.clone())
        .await
        .unwrap();
    let mut second = HttpConn::connect(proxy.sni_addr(), "allowed.test", lb.h1.clone())
        .await
        .unwrap();
    assert_eq!(first.get("/").await.unwrap().status, 200);
    assert_eq!(second.get("/").await.unwrap().status, 200);
    proxy
        .wait_for_metric("tollgate_open_connections", &[], SETTLE, |v| v == 2.0)
        .await
        .unwrap();

    let log = lb.assert_rejected(&proxy, "allowed.test").await.unwrap();
    // Refused at accept, before any byte is read: no SNI, its own reason and counter.
    assert_eq!(
        (log["route"].as_str(), log["reason"].as_str()),
        (Some("reject"), Some("connection-limit")),
        "{log}"
    );
    let refused = [("reason", "connection-limit")];
    assert_eq!(
        proxy
            .metric("tollgate_connections_refused_total", &refused)
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(proxy.metric(CONN, &refused).await.unwrap(), 1.0);
    assert_eq!(lb.server.stats().connections(), 2);

    // Both held tunnels still work; closing one frees a slot.
    assert_eq!(second.get("/").await.unwrap().status, 200);
    drop(first);
    proxy
        .wait_for_metric("tollgate_open_connections", &[], SETTLE, |v| v <= 1.0)
        .await
        .unwrap();
    lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();
    assert_eq!(second.get("/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_drip_hello_is_cut_at_the_hello_timeout() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .arg("--hello-timeout")
        .arg("1s")
        .start()
        .await
        .unwrap();

    let hello = rustls_client_hello(lb.h1.clone(), "allowed.test").unwrap();
    let mut client = RawClient::connect(proxy.sni_addr()).await.unwrap();
    let (sent, closed) = client
        .drip_until_closed(&hello, Duration::from_millis(200), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(closed.received.is_empty(), "no bytes back: {closed:?}");
    assert!(
        closed.elapsed >= Duration::from_millis(800) && closed.elapsed < Duration::from_secs(3),
        "cut after {:?} ({sent} bytes dripped) with a 1 s hello timeout\n{}",
        closed.elapsed,
        proxy.describe()
    );

    // A client that says nothing at all is cut the same way.
    let mut silent = RawClient::connect(proxy.sni_addr()).await.unwrap();
    let closed = silent.read_to_close(Duration::from_secs(5)).await.unwrap();
    assert!(
        closed.elapsed < Duration::from_secs(3),
        "silent client cut after {:?}",
        closed.elapsed
    );

    let logs = proxy.wait_for_connection_logs(2, SETTLE).await.unwrap();
    for log in &logs {
        assert_eq!(
            (log["route"].as_str(), log["reason"].as_str()),
            (Some("reject"), Some("timeout")),
            "{log}"
        );
    }
    assert_eq!(
        proxy
            .metric(HELLO_FAIL, &[("reason", "timeout")])
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(
        proxy
            .metric(CONN, &[("route", "reject"), ("reason", "timeout")])
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(lb.server.stats().connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_hello_is_refused_as_too_large() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();

    // 16 KiB + 1 of ClientHello body, in two records.
    let big = tls_records(
        &client_hello_message(Some(b"allowed.test"), MAX_FRAGMENT + 1),
        MAX_FRAGMENT,
    );
    let log = lb
        .assert_rejected_bytes(&proxy, &big, "16 KiB + 1 hello")
        .await
        .unwrap();
    assert_eq!(
        (log["route"].as_str(), log["reason"].as_str()),
        (Some("reject"), Some("too-large")),
        "{log}"
    );

    // Headers alone that announce an oversized hello are enough to refuse it.
    let mut headers = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01];
    headers.extend_from_slice(&(100_000u32.to_be_bytes()[1..]));
    let log = lb
        .assert_rejected_bytes(&proxy, &headers, "headers announcing 100 kB")
        .await
        .unwrap();
    assert_eq!(log["reason"], "too-large", "{log}");

    assert_eq!(
        proxy
            .metric(HELLO_FAIL, &[("reason", "too-large")])
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(
        proxy
            .metric(CONN, &[("route", "reject"), ("reason", "too-large")])
            .await
            .unwrap(),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn awkward_but_legal_hellos_still_route() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();

    // A real client whose first flight arrives 7 bytes at a time.
    let tcp = tokio::net::TcpStream::connect(proxy.sni_addr())
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tls_handshake(
        Trickle::new(tcp, 7, Duration::from_millis(2)),
        "allowed.test",
        lb.h1.clone(),
    )
    .await
    .unwrap();
    let mut conn = HttpConn::handshake(tls, "allowed.test").await.unwrap();
    assert_eq!(conn.get("/").await.unwrap().text(), lb.server.hello_body());
    drop(conn);
    proxy.wait_for_connection_logs(1, SETTLE).await.unwrap();

    // Hand-made hellos: split over 100-byte records, and padded to 12 KiB.
    let fragmented = tls_records(&client_hello_message(Some(b"allowed.test"), 0), 100);
    let padded = tls_records(
        &client_hello_message(Some(b"allowed.test"), 12 * 1024),
        MAX_FRAGMENT,
    );
    for (i, bytes) in [fragmented, padded].into_iter().enumerate() {
        let before = lb.server.stats().connections();
        let mut raw = RawClient::connect(proxy.sni_addr()).await.unwrap();
        let peer = raw.local_addr().unwrap();
        raw.send(&bytes).await.unwrap();
        let upstream = lb.server.stats();
        eventually(SETTLE, "the upstream to be dialed", || async {
            (upstream.connections() > before).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("hand-made hello {i}: {e}\n{}", proxy.describe()));
        drop(raw);
        let log = proxy.wait_for_peer(peer, SETTLE).await.unwrap();
        assert_eq!(
            (log["route"].as_str(), log["reason"].as_str()),
            (Some("tunnel"), Some("allow-listed")),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tunnels_are_closed_but_busy_ones_are_not() {
    let lb = Loopback::new().await.unwrap();
    let mut spec = lb.policy();
    spec.idle_timeout = "1s".into();
    let proxy = lb.proxy(&spec).await.unwrap();

    let mut idle = HttpConn::connect(proxy.sni_addr(), "allowed.test", lb.h1.clone())
        .await
        .unwrap();
    assert_eq!(idle.get("/").await.unwrap().status, 200);
    let idle_since = std::time::Instant::now();

    // 25 chunks 100 ms apart: 2.5 s of traffic, never 1 s of silence.
    let mut busy = HttpConn::connect(proxy.sni_addr(), "allowed.test", lb.h1.clone())
        .await
        .unwrap();
    let mut body = busy
        .get_streaming("/slow/25/100", false)
        .await
        .unwrap()
        .into_body();
    let mut chunks = 0;
    while let Some(_chunk) = tollgate_tests::clients::next_chunk(&mut body)
        .await
        .unwrap_or_else(|e| panic!("busy tunnel cut: {e:#}\n{}", proxy.describe()))
    {
        chunks += 1;
    }
    assert_eq!(chunks, 25, "the busy tunnel delivered everything");
    assert_eq!(busy.get("/").await.unwrap().status, 200);

    eventually(
        Duration::from_secs(4),
        "the idle tunnel to be closed",
        || async { (!idle.is_open()).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.describe()));
    let closed_after = idle_since.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "idle tunnel closed after {closed_after:?} with a 1 s idle timeout"
    );
    assert!(idle.get("/").await.is_err());
    proxy
        .wait_for_log(SETTLE, "a tunnel ended by the idle timeout", |l| {
            l["message"] == "connection" && l["end"] == "idle-timeout"
        })
        .await
        .unwrap();
}
