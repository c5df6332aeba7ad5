//! SIGTERM / SIGINT: the proxy stops accepting at once, lets open tunnels finish within the drain
//! timeout, cuts what is left when it runs out, and exits 0.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tollgate_tests::clients::{HttpConn, https_get, next_chunk};
use tollgate_tests::eventually;
use tollgate_tests::fixture::{Loopback, SETTLE};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_refuses_new_connections_and_lets_an_open_transfer_finish() {
    let lb = Loopback::new().await.unwrap();
    let mut proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .arg("--drain-timeout")
        .arg("10s")
        .start()
        .await
        .unwrap();
    let addr = proxy.sni_addr();

    // 12 chunks, 100 ms apart: the transfer is mid-way when the signal comes.
    let mut conn = HttpConn::connect(addr, "allowed.test", lb.h1.clone())
        .await
        .unwrap();
    let mut body = conn
        .get_streaming("/slow/12/100", true)
        .await
        .unwrap()
        .into_body();
    let mut got =
        String::from_utf8(next_chunk(&mut body).await.unwrap().unwrap().to_vec()).unwrap();
    assert_eq!(got, "chunk 0\n");

    let signalled = Instant::now();
    proxy.sigterm().unwrap();
    // The signal is handled asynchronously: a connection or two may still slip in before it is.
    eventually(SETTLE, "new connections to be refused", || async {
        https_get(addr, "allowed.test", lb.h1.clone(), "/")
            .await
            .is_err()
            .then_some(())
    })
    .await
    .unwrap();
    let refused_after = signalled.elapsed();
    assert!(
        refused_after < Duration::from_secs(1),
        "refusing new connections took {refused_after:?}"
    );
    let upstream_before = lb.server.stats().connections();
    for _ in 0..3 {
        let connect = tokio::net::TcpStream::connect(addr).await;
        assert!(
            connect.is_err(),
            "the listener is closed after SIGTERM (connect must be refused)"
        );
        assert!(
            https_get(addr, "allowed.test", lb.h1.clone(), "/")
                .await
                .is_err()
        );
    }
    assert_eq!(
        lb.server.stats().connections(),
        upstream_before,
        "no new tunnel after SIGTERM"
    );
    assert!(
        proxy.try_wait_alive(),
        "the proxy must wait for the open transfer\n{}",
        proxy.describe()
    );

    while let Some(chunk) = next_chunk(&mut body)
        .await
        .unwrap_or_else(|e| panic!("transfer cut: {e:#}\n{}", proxy.describe()))
    {
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let expected: String = (0..12).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(got, expected, "the whole transfer arrived");
    drop(conn);

    let status = proxy.wait_exit(Duration::from_secs(8)).await.unwrap();
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        proxy.describe()
    );
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM: it should not wait for the 10 s drain timeout"
    );
    let log = proxy
        .connection_logs()
        .into_iter()
        .find(|l| l["route"] == "tunnel")
        .unwrap();
    assert!(
        log["bytes_down"].as_u64().unwrap() > expected.len() as u64,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_timeout_cuts_a_never_ending_tunnel_and_exits() {
    let lb = Loopback::new().await.unwrap();
    let mut proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .arg("--drain-timeout")
        .arg("1s")
        .start()
        .await
        .unwrap();

    let mut conn = HttpConn::connect(proxy.sni_addr(), "allowed.test", lb.h1.clone())
        .await
        .unwrap();
    let mut body = conn
        .get_streaming("/slow/0/50", false)
        .await
        .unwrap()
        .into_body();
    assert!(next_chunk(&mut body).await.unwrap().is_some());

    let signalled = Instant::now();
    proxy.sigterm().unwrap();
    let mut chunks_after = 0;
    // Read until the tunnel is cut (end of body or an error: either way, it is over).
    while let Ok(Some(_)) = next_chunk(&mut body).await {
        chunks_after += 1;
    }
    let cut_after = signalled.elapsed();
    assert!(chunks_after > 0, "the tunnel kept flowing during the drain");
    assert!(
        cut_after >= Duration::from_millis(800) && cut_after < Duration::from_secs(4),
        "cut {cut_after:?} after SIGTERM with a 1 s drain timeout\n{}",
        proxy.describe()
    );
    let status = proxy.wait_exit(Duration::from_secs(4)).await.unwrap();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        proxy.describe()
    );
    let log = proxy
        .connection_logs()
        .into_iter()
        .find(|l| l["route"] == "tunnel")
        .unwrap_or_else(|| panic!("the cut tunnel still gets its line\n{}", proxy.describe()));
    assert_eq!(log["end"], "drain-timeout", "why it ended: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_proxy_exits_zero_at_once_on_sigterm_and_sigint() {
    let lb = Loopback::new().await.unwrap();
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let mut proxy = lb.proxy(&lb.policy()).await.unwrap();
        lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();
        let t = Instant::now();
        proxy.signal(sig).unwrap();
        let status = proxy.wait_exit(Duration::from_secs(3)).await.unwrap();
        assert!(
            status.success(),
            "{sig}: exit status {status}\n{}",
            proxy.describe()
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{sig}: took {:?} with nothing open",
            t.elapsed()
        );
    }
}
