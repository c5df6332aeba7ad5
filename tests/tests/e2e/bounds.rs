//! Resource bounds and port squatting, against the real binary: what an agent sharing the Pod's
//! network namespace can do to tollgate itself. The read-only ports (admin, usage) cut request
//! heads that are too big or too slow and cap their connections; the gateway holds request
//! bodies under one budget; a port another process holds is waited for (not ready meanwhile)
//! instead of exiting.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tollgate_tests::clients::{RawClient, tls_connect};
use tollgate_tests::eventually;
use tollgate_tests::fake_openrouter::CHAT;
use tollgate_tests::fixture::Loopback;
use tollgate_tests::gateway::{Gateway, HOST, MODEL, RunningGateway, SETTLE, chat, error_message};
use tollgate_tests::llm_client::{AGENT_KEY, client_config_from_pem};
use tollgate_tests::pki::ALPN_HTTP11;
use tollgate_tests::proxy::{Proxy, parse_http_response};
use tollgate_tests::require_root;
use tollgate_tests::squat::PortHolder;

const CLOSED: &str = "tollgate_read_only_closed_total";

/// A request head that never ends: 64 KiB of one header value, no blank line.
fn endless_head() -> Vec<u8> {
    let mut head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 64 * 1024));
    head
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_ports_cut_oversized_and_stalled_request_heads() {
    let gw = Gateway::new().await.unwrap();
    // The header timeout is a flag (5 s by default): 1 s here, so the stalled heads below are
    // cut after 1 s each instead of 5.
    let run = gw
        .start_with(&gw.spec(), &[("TOLLGATE_READ_ONLY_HEADER_TIMEOUT", "1s")])
        .await
        .unwrap();
    let usage = run.usage_addr.expect("the gateway serves the usage port");
    for (name, addr) in [("admin", run.proxy.admin_addr()), ("usage", usage)] {
        // Today's hyper default would buffer ~400 KB of head per connection; 64 KiB is refused.
        let mut big = RawClient::connect(addr).await.unwrap();
        let closed = big
            .send_and_read_to_close(&endless_head(), Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}\n{}", run.proxy.describe()));
        let text = String::from_utf8_lossy(&closed.received);
        assert!(text.starts_with("HTTP/1.1 431"), "{name}: {text:?}");

        // A head that stops half way is cut at the header timeout.
        let mut slow = RawClient::connect(addr).await.unwrap();
        slow.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.read_to_close(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{name}: stalled head: {e:#}\n{}", run.proxy.describe()));

        let labels = |reason| [("listener", name), ("reason", reason)];
        let m = &run.proxy;
        assert_eq!(
            m.metric(CLOSED, &labels("headers-too-large"))
                .await
                .unwrap(),
            1.0
        );
        assert_eq!(
            m.metric(CLOSED, &labels("header-timeout")).await.unwrap(),
            1.0
        );
    }
    // Still serving, one request per connection.
    assert_eq!(run.proxy.admin_get("/readyz").await.unwrap().0, 200);
    assert_eq!(run.usage_get("/api/v1/usage").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_connection_cap_closes_the_excess_and_recovers() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .arg("--read-only-max-connections")
        .arg("3")
        .arg("--read-only-header-timeout")
        .arg("60s")
        .start()
        .await
        .unwrap();
    let admin = proxy.admin_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = RawClient::connect(admin).await.unwrap();
        c.send(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    // Once the three are accepted, a fourth is closed without an answer.
    eventually(
        SETTLE,
        "a connection over the cap to be closed unanswered",
        || async {
            let mut c = RawClient::connect(admin).await.ok()?;
            let closed = c
                .send_and_read_to_close(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", SETTLE)
                .await
                .ok()?;
            closed.received.is_empty().then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", proxy.describe()));
    drop(held);
    proxy.wait_ready(SETTLE).await.unwrap();
    let refused = [("listener", "admin"), ("reason", "connection-limit")];
    assert!(proxy.metric(CLOSED, &refused).await.unwrap() >= 1.0);
}

/// A chat body whose extra field parses into ~`n` JSON values: `[0,0,0,...]`.
fn dense_chat(n: usize) -> serde_json::Value {
    let mut body = chat(MODEL);
    body["padding"] = json!(vec![0; n]);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_would_parse_into_more_than_the_budget_is_refused_unparsed() {
    let gw = Gateway::new().await.unwrap();
    let run = gw
        .start(
            &gw.spec()
                .budget("1000")
                .set("intercept", "max_body", "4MiB"),
        )
        .await
        .unwrap();
    // 1.5 MB of `0,`: under max_body, but ~750k JSON values (~100 MB parsed) against the
    // default 48 MiB budget.
    let r = run
        .client()
        .post_json(CHAT, &dense_chat(750_000))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    let message = error_message(413, &r.json()).unwrap();
    assert!(message.contains("body budget"), "{message}");
    assert!(gw.fake.requests_to(CHAT).is_empty());
    // The same field, small, is fine (and dropped: not on the chat allowlist).
    let r = run
        .client()
        .post_json(CHAT, &dense_chat(100))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Opens an HTTP/1.1 POST through the gateway that declares `declared` bytes of body and sends
/// only its first byte: it holds that much of the body budget until dropped.
async fn hold_body(run: &RunningGateway, declared: usize) -> TlsStream<TcpStream> {
    let config = client_config_from_pem(&run.ca_pem, ALPN_HTTP11).unwrap();
    let mut tls = tollgate_tests::clients::tls_connect(
        run.proxy.sni_addr(),
        tollgate_tests::gateway::HOST,
        config,
    )
    .await
    .unwrap();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: openrouter.ai\r\nAuthorization: Bearer {AGENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_body_budget_makes_new_bodies_wait_then_503_and_recovers() {
    let gw = Gateway::new().await.unwrap();
    let builder = gw
        .builder(&gw.spec(), &[])
        .unwrap()
        .arg("--body-budget")
        .arg("1MiB");
    let run = RunningGateway::start_from(builder, &gw).await.unwrap();
    let holder = hold_body(&run, 900 * 1024).await;
    run.proxy
        .wait_for_metric("tollgate_body_budget_in_use_bytes", &[], SETTLE, |v| {
            v >= 900.0 * 1024.0
        })
        .await
        .unwrap();

    // 300 KB of text in a dropped field: fits the budget alone, not beside the held 900 KiB.
    let mut big = chat(MODEL);
    big["padding"] = json!("x".repeat(300 * 1024));
    let r = run.client().post_json(CHAT, &big).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        error_message(503, &r.json())
            .unwrap()
            .contains("bodies in flight")
    );
    assert_eq!(
        run.metric("tollgate_llm_denials_total", &[("reason", "body-budget")])
            .await
            .unwrap(),
        1.0
    );
    assert!(gw.fake.requests_to(CHAT).is_empty());

    // Small requests still fit beside it; once the holder hangs up, the big one does too.
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    drop(holder);
    run.proxy
        .wait_for_metric("tollgate_body_budget_in_use_bytes", &[], SETTLE, |v| {
            v == 0.0
        })
        .await
        .unwrap();
    let r = run.client().post_json(CHAT, &big).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn intercepted_connections_over_their_cap_are_closed_after_the_hello() {
    let gw = Gateway::new().await.unwrap();
    let builder = gw
        .builder(&gw.spec(), &[])
        .unwrap()
        .arg("--max-intercepted-connections")
        .arg("2");
    let run = RunningGateway::start_from(builder, &gw).await.unwrap();
    let config = client_config_from_pem(&run.ca_pem, ALPN_HTTP11).unwrap();
    let connect = || tls_connect(run.proxy.sni_addr(), HOST, config.clone());
    let first = connect().await.unwrap();
    let second = connect().await.unwrap();
    assert!(
        connect().await.is_err(),
        "a third intercepted connection is closed"
    );
    run.proxy
        .wait_for_log(SETTLE, "a connection closed at the intercept limit", |v| {
            v["message"] == "connection" && v["reason"] == "intercept-limit"
        })
        .await
        .unwrap();
    assert!(
        run.metric(
            "tollgate_connections_total",
            &[("reason", "intercept-limit")]
        )
        .await
        .unwrap()
            >= 1.0
    );
    drop(first);
    eventually(SETTLE, "a request once a slot is free", || async {
        let r = run.client().post_json(CHAT, &chat(MODEL)).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.proxy.describe()));
    drop(second);
}

/// The holder line tollgate logs while a port is taken.
async fn holder_line(proxy: &Proxy, listener: &str) -> serde_json::Value {
    proxy
        .wait_for_log(SETTLE, "a log line naming the port's holder", |v| {
            v["message"] == "port in use by another socket; not ready until it is freed"
                && v["listener"] == listener
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_squatted_sni_port_keeps_tollgate_up_and_not_ready_until_it_is_freed() {
    if !require_root() {
        return;
    }
    let lb = Loopback::new().await.unwrap();
    let squatter = PortHolder::spawn(0, Some(65534)).unwrap();
    let sni: SocketAddr = format!("127.0.0.1:{}", squatter.port).parse().unwrap();
    let mut proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .listen(&sni.to_string())
        .spawn()
        .await
        .unwrap();
    proxy.wait_listening(0).await.unwrap();
    let line = holder_line(&proxy, "sni").await;
    let holder = line["holder"].as_str().unwrap();
    assert!(holder.contains("uid=65534"), "{line}");
    assert!(
        holder.contains(&format!("pid={}", squatter.pid())),
        "{line}"
    );
    assert_eq!(line["addr"], sni.to_string(), "{line}");

    // Up, answering its own admin port, and not ready.
    assert_eq!(proxy.admin_get("/readyz").await.unwrap().0, 503);
    let (code, stderr) = proxy.probe(proxy.admin_addr()).unwrap();
    assert_eq!(code, 1, "tollgate probe while not ready: {stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    assert_eq!(proxy.admin_get("/healthz").await.unwrap().0, 200);
    assert!(proxy.try_wait_alive(), "{}", proxy.describe());
    assert!(
        proxy
            .metric("tollgate_bind_retries_total", &[("listener", "sni")])
            .await
            .unwrap()
            >= 1.0
    );

    drop(squatter);
    proxy.wait_listening(1).await.unwrap();
    assert_eq!(proxy.sni_addr(), sni);
    proxy
        .wait_ready(SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", proxy.describe()));
    lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();
    assert_eq!(
        proxy
            .metric("tollgate_listener_bound", &[("listener", "sni")])
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_squatted_admin_port_is_waited_for_and_then_served() {
    if !require_root() {
        return;
    }
    let lb = Loopback::new().await.unwrap();
    let squatter = PortHolder::spawn(0, Some(65534)).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", squatter.port).parse().unwrap();
    let mut proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .admin_listen(&admin.to_string())
        .spawn()
        .await
        .unwrap();
    let line = holder_line(&proxy, "admin").await;
    assert!(
        line["holder"].as_str().unwrap().contains("uid=65534"),
        "{line}"
    );
    // The residual: while the squatter holds it, a probe there gets the squatter's answer.
    let mut probe = tokio::net::TcpStream::connect(admin).await.unwrap();
    let raw = {
        use tokio::io::AsyncReadExt;
        probe
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        probe.read_to_end(&mut raw).await.unwrap();
        raw
    };
    assert_eq!(
        parse_http_response(&raw).unwrap().0,
        200,
        "the squatter's forged answer"
    );
    assert!(proxy.try_wait_alive(), "{}", proxy.describe());
    // ... but not one `tollgate probe` (the exec probe) accepts.
    let (code, stderr) = proxy.probe(admin).unwrap();
    assert_eq!(code, 1, "tollgate probe against the squatter: {stderr}");
    assert!(stderr.contains("no valid proof"), "{stderr}");

    drop(squatter);
    proxy.wait_listening(1).await.unwrap();
    assert_eq!(proxy.admin_addr(), admin);
    proxy.wait_ready(SETTLE).await.unwrap();
    assert!(
        proxy
            .metrics()
            .await
            .unwrap()
            .contains("tollgate_build_info")
    );
    let (code, stderr) = proxy.probe(admin).unwrap();
    assert_eq!(code, 0, "tollgate probe against tollgate: {stderr}");
    lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();
}
