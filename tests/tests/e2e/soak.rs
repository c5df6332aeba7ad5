//! A bounded soak: the agent's floods against tollgate, all at once, on the real binary with its
//! default limits. Header floods on the admin and usage ports, slow-body floods on the LLM
//! gateway (declared 10 MiB bodies and chunked ones, trickled), and held half-hellos on the SNI
//! port, while an allowed tunnel is used every 250 ms. Asserts the proxy's peak RSS stays under
//! [`RSS_BOUND_MIB`], every tunnel attempt succeeds, and nothing panics; prints the figures
//! (BENCHMARKS.md, "Resource bounds under attack"). `TOLLGATE_SOAK_SECS` sets the flood time.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_tests::clients::{HttpConn, tls_connect, tls_handshake};
use tollgate_tests::fake_openrouter::CHAT;
use tollgate_tests::fixture::Loopback;
use tollgate_tests::gateway::{Gateway, HOST, MODEL, chat};
use tollgate_tests::hello::rustls_client_hello;
use tollgate_tests::llm_client::{AGENT_KEY, client_config_from_pem};
use tollgate_tests::pki::ALPN_HTTP11;

/// The stated bound on the proxy's peak RSS under the floods: the Pod's limit is 256 MiB.
const RSS_BOUND_MIB: u64 = 160;
/// Header-flood connections per read-only port (each sends up to ~400 KB of head).
const HEADER_FLOODERS: usize = 500;
/// Slow-body connections to the gateway.
const BODY_FLOODERS: usize = 100;
/// Held half-hellos on the SNI port: with the body flooders, below `--max-connections` (512),
/// since above it the agent blocks its own egress (new connections are refused at accept).
const HELLO_FLOODERS: usize = 300;

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Connects again and again, sending up to 400 KB of a request head that never ends.
async fn header_flooder(addr: SocketAddr, stop: Arc<AtomicBool>, cut: Arc<AtomicU64>) {
    let mut chunk = b"GET /api/v1/usage HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    chunk.extend(std::iter::repeat_n(b'a', 16 * 1024));
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for _ in 0..25 {
            if s.write_all(&chunk).await.is_err() || stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Hold what was sent until the proxy cuts it.
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        cut.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens LLM requests that trickle their body (declared 10 MiB - 1, or chunked), again and again.
async fn body_flooder(
    addr: SocketAddr,
    ca_pem: Arc<Vec<u8>>,
    chunked: bool,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
) {
    let config = client_config_from_pem(&ca_pem, ALPN_HTTP11).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", 10 * 1024 * 1024 - 1)
    };
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {AGENT_KEY}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n"
    );
    let piece = vec![b' '; 16 * 1024];
    let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
    framed.extend_from_slice(&piece);
    framed.extend_from_slice(b"\r\n");
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tls) = tls_connect(addr, HOST, config.clone()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        if tls.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let body = if chunked { &framed } else { &piece };
        while !stop.load(Ordering::Relaxed) {
            if tls.write_all(body).await.is_err() || tls.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Holds a ClientHello's first half on the SNI port until the hello timeout cuts it; again.
async fn hello_flooder(addr: SocketAddr, half: Arc<Vec<u8>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = s.write_all(&half).await;
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_together_stay_under_the_rss_bound_and_tunnels_keep_working() {
    let secs: u64 = std::env::var("TOLLGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let lb = Loopback::new().await.unwrap();
    let gw = Gateway::new().await.unwrap();
    let tunnel_host = "hosts.\"allowed.test\"";
    let spec = gw
        .spec()
        .set("tunnel", "allow", json!(["allowed.test"]))
        .set(tunnel_host, "pin", json!(["127.0.0.1"]))
        .set(tunnel_host, "port", lb.server.port())
        .set(tunnel_host, "allow_ranges", json!(["127.0.0.0/8"]));
    let run = gw.start(&spec).await.unwrap();
    let pid = run.proxy.pid();
    let sni = run.proxy.sni_addr();
    let admin = run.proxy.admin_addr();
    let usage = run.usage_addr.unwrap();
    let (rss0, _) = rss_kib(pid).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..HEADER_FLOODERS * 2 {
        let addr = if i % 2 == 0 { admin } else { usage };
        tasks.push(tokio::spawn(header_flooder(
            addr,
            stop.clone(),
            cut.clone(),
        )));
    }
    let ca = Arc::new(run.ca_pem.clone());
    for i in 0..BODY_FLOODERS {
        tasks.push(tokio::spawn(body_flooder(
            sni,
            ca.clone(),
            i % 2 == 1,
            stop.clone(),
            opened.clone(),
        )));
    }
    let hello = rustls_client_hello(lb.h1.clone(), "allowed.test").unwrap();
    let half = Arc::new(hello[..hello.len() / 2].to_vec());
    for _ in 0..HELLO_FLOODERS {
        tasks.push(tokio::spawn(hello_flooder(sni, half.clone(), stop.clone())));
    }

    // Meanwhile: the allowed tunnel, and the proxy's memory.
    let started = Instant::now();
    let (mut tunnels, mut failures, mut peak_rss) = (0u64, Vec::new(), 0u64);
    while started.elapsed() < Duration::from_secs(secs) {
        let attempt = async {
            let tcp = TcpStream::connect(sni).await?;
            let tls = tls_handshake(tcp, "allowed.test", lb.h1.clone()).await?;
            HttpConn::handshake(tls, "allowed.test")
                .await?
                .get("/")
                .await
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(r)) if r.status == 200 && r.text() == lb.server.hello_body() => tunnels += 1,
            other => failures.push(format!("{:?}", other.map(|r| r.map(|r| r.status)))),
        }
        if let Some((rss, _)) = rss_kib(pid) {
            peak_rss = peak_rss.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (rss_end, hwm) = rss_kib(pid).expect("the proxy is still running");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    // The admin port's slots were the flood's; scrape once they are free again.
    let metrics = tollgate_tests::eventually(
        Duration::from_secs(20),
        "a /metrics scrape after the floods",
        || async { run.proxy.metrics().await.ok() },
    )
    .await
    .unwrap();

    let denials = |reason: &str| {
        tollgate_tests::proxy::metric_value(
            &metrics,
            "tollgate_llm_denials_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    let closed = |listener: &str| {
        tollgate_tests::proxy::metric_value(
            &metrics,
            "tollgate_read_only_closed_total",
            &[("listener", listener)],
        )
        .unwrap_or(0.0)
    };
    let hello_timeouts = tollgate_tests::proxy::metric_value(
        &metrics,
        "tollgate_client_hello_failures_total",
        &[("reason", "timeout")],
    )
    .unwrap_or(0.0);
    println!(
        "soak {secs} s: proxy RSS start {} MiB, sampled peak {} MiB, end {} MiB, VmHWM {} MiB \
         (bound {RSS_BOUND_MIB} MiB); tunnels ok {tunnels}, failed {}; head floods cut {}; \
         read-only closes admin {} usage {}; gateway requests opened {}, 503 body-budget {}, \
         408 slow-client {}; hello timeouts {hello_timeouts}",
        rss0 / 1024,
        peak_rss / 1024,
        rss_end / 1024,
        hwm / 1024,
        failures.len(),
        cut.load(Ordering::Relaxed),
        closed("admin"),
        closed("usage"),
        opened.load(Ordering::Relaxed),
        denials("body-budget"),
        denials("slow-client"),
    );
    let panics: Vec<String> = run
        .proxy
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "the proxy panicked: {panics:#?}");
    assert!(failures.is_empty(), "tunnel attempts failed: {failures:?}");
    assert!(tunnels > 0);
    assert!(
        hwm / 1024 < RSS_BOUND_MIB,
        "peak RSS {} MiB over the {RSS_BOUND_MIB} MiB bound",
        hwm / 1024
    );
    // The floods really ran into the bounds.
    assert!(closed("admin") > 0.0 && closed("usage") > 0.0);
    assert!(denials("body-budget") > 0.0);
    // And the gateway still answers a normal request afterwards.
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
