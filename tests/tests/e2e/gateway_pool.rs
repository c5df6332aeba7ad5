//! The gateway's upstream connections (issue 13): HTTP/1.1 keep-alive, driven by the request
//! that uses them. Sequential requests, streamed or not, reuse one connection; one the upstream
//! closed while it sat idle in the pool is not used again, and the next request still succeeds.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tollgate_tests::fake_openrouter::CHAT;
use tollgate_tests::gateway::{Gateway, MODEL, chat, chat_stream};

#[tokio::test(flavor = "multi_thread")]
async fn requests_reuse_one_upstream_connection() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for _ in 0..3 {
        let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
        assert_eq!(r.status, 200, "{}\n{}", r.text(), run.proxy.describe());
    }
    assert_eq!(gw.fake.connections(), 1, "{}", run.proxy.describe());
    let request = gw.fake.requests_to(CHAT).pop().unwrap();
    let authority = format!("openrouter.ai:{}", gw.fake.port());
    assert_eq!(request.header("host"), Some(authority.as_str()));

    // A stream's connection is driven by a task of its own and comes back to the pool too.
    let mut ex = run
        .client()
        .post_json_streaming(CHAT, &chat_stream(MODEL))
        .await
        .unwrap();
    let rest = ex.read_to_end().await.unwrap();
    assert!(rest.contains("[DONE]"), "{rest}");
    // Whether the next request finds it back already is a race; it must not fail either way.
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(gw.fake.connections() <= 2, "{}", gw.fake.connections());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.fake.connections(), 1);

    gw.fake.close_connections();
    // Let the close reach the pooled socket (loopback: microseconds), as it would in the
    // seconds an idle connection sits in the pool; the checkout must then notice it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..2 {
        let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
        assert_eq!(r.status, 200, "{}\n{}", r.text(), run.proxy.describe());
    }
    assert_eq!(gw.fake.connections(), 2, "{}", run.proxy.describe());
}

/// The upstream is dialled as tunnels are: a pinned loopback address the policy does not
/// explicitly allow is refused, so a policy (or a DNS answer) cannot aim the gateway at the
/// Pod's own or the cluster's private services. The fake never sees a connection.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_address_the_policy_does_not_allow_is_never_dialled() {
    let gw = Gateway::new().await.unwrap();
    let spec = gw.spec().unset("hosts.\"openrouter.ai\"", "allow_ranges");
    let run = gw.start(&spec).await.unwrap();
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 502, "{}\n{}", r.text(), run.proxy.describe());
    assert_eq!(gw.fake.connections(), 0, "{}", run.proxy.describe());
}
