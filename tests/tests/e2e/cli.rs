//! The binary's edges: `tollgate check`, refusing to start on a bad policy (exit 64), the admin
//! endpoints, the embedded default policy, and options taken from the environment.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tollgate_tests::clients::HttpConn;
use tollgate_tests::fixture::{Loopback, SETTLE};
use tollgate_tests::proxy::{Proxy, tollgate_bin};

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(tollgate_bin())
        .arg("check")
        .arg(path)
        .output()
        .unwrap()
}

#[tokio::test]
async fn check_accepts_a_good_policy_and_summarises_it() {
    let lb = Loopback::new().await.unwrap();
    let path = lb.write_policy(&lb.policy()).unwrap();
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for word in [
        "allowed.test",
        "*.wild.test",
        "denied.test",
        "openrouter.ai",
    ] {
        assert!(stdout.contains(word), "summary mentions {word}: {stdout}");
    }
}

#[tokio::test]
async fn check_rejects_bad_policies_naming_file_and_line() {
    let lb = Loopback::new().await.unwrap();
    let good = lb.policy().to_toml();
    let cases = [
        (
            "unknown key",
            good.replace("[tunnel]\n", "[tunnel]\nallow_everything = true\n"),
        ),
        ("bad CIDR", good.replace("127.0.0.0/8", "127.0.0.0/40")),
        (
            "bad duration",
            good.replace("connect_timeout = \"2s\"", "connect_timeout = \"soon\""),
        ),
        (
            "bad pin",
            good.replace("pin = [\"127.0.0.1\"]", "pin = [\"localhost\"]"),
        ),
        (
            "unsupported version",
            good.replace("version = 1", "version = 2"),
        ),
        (
            "bad phase",
            good.replace("phase = \"agent\"", "phase = \"party\""),
        ),
        ("not TOML", "version = 1\n[tunnel\n".to_string()),
    ];
    for (what, text) in cases {
        assert_ne!(text, good, "{what}: the case must change the policy");
        let path = lb.dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: check exits 1 on an invalid policy\n{text}"
        );
        assert!(
            stderr.contains(&*path.to_string_lossy()),
            "{what}: the error names the file: {stderr}"
        );
        // `<file>:<line>:<col>: ...`
        let located = stderr.split(&*path.to_string_lossy()).nth(1).unwrap_or("");
        assert!(
            located.starts_with(':') && located[1..].starts_with(|c: char| c.is_ascii_digit()),
            "{what}: the error names the line: {stderr}"
        );
    }
    let missing = lb.dir.path().join("missing.toml");
    assert_eq!(check(&missing).status.code(), Some(1));
}

/// Runs `tollgate args`, which must exit by itself within [`SETTLE`]; returns its exit code.
async fn exit_code(args: &[&str]) -> Option<i32> {
    let mut child = Command::new(tollgate_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tollgate {args:?} kept running");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_flags_exit_64() {
    let lb = Loopback::new().await.unwrap();
    let policy = lb.write_policy(&lb.policy()).unwrap();
    let policy = policy.to_str().unwrap();
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--policy",
        policy,
    ];
    for bad in [
        &["--no-such-flag"][..],
        &["--hello-timeout", "soon"],
        &["--max-connections", "many"],
        &["--log-format", "xml"],
        &["--listen", "not-an-address"],
    ] {
        let args: Vec<&str> = base.iter().chain(bad).copied().collect();
        assert_eq!(exit_code(&args).await, Some(64), "tollgate {bad:?}");
    }
}

#[tokio::test]
async fn refuses_to_start_on_a_bad_policy_with_exit_64() {
    let lb = Loopback::new().await.unwrap();
    let path = lb.dir.path().join("bad.toml");
    std::fs::write(&path, "version = 1\nbogus = true\n").unwrap();
    let mut child = Command::new(tollgate_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--policy",
        ])
        .arg(&path)
        .args([
            "--capture-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + SETTLE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tollgate kept running with a bad policy");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(64), "exit code for bad configuration");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_answer() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb.proxy(&lb.policy()).await.unwrap();
    assert_eq!(proxy.admin_get("/healthz").await.unwrap().0, 200);
    assert_eq!(proxy.admin_get("/readyz").await.unwrap().0, 200);
    assert_eq!(proxy.admin_get("/no-such-page").await.unwrap().0, 404);
    // Read-only: anything but GET (and HEAD) is 405, whatever the path.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/metrics", "/healthz", "/readyz"] {
            let (status, body) = proxy.admin_request(method, path).await.unwrap();
            assert_eq!(status, 405, "{method} {path}: {body}");
        }
    }
    let version = env!("CARGO_PKG_VERSION"); // the workspace shares one version
    assert_eq!(
        proxy
            .metric("tollgate_build_info", &[("version", version)])
            .await
            .unwrap(),
        1.0
    );
    // Labelled counters appear once they have a child, so route one connection first.
    lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();
    let text = proxy.metrics().await.unwrap();
    for series in [
        "tollgate_connections_total",
        "tollgate_open_connections",
        "tollgate_tunnel_bytes_total",
        "tollgate_connection_duration_seconds",
        "tollgate_phase",
    ] {
        assert!(
            text.contains(&format!("# TYPE {series} ")),
            "/metrics declares {series}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_default_policy_intercepts_openrouter_and_rejects_the_rest() {
    let lb = Loopback::new().await.unwrap();
    let proxy = Proxy::builder().start().await.unwrap();
    // openrouter.ai is terminated by the gateway with the per-Pod CA, which this client does
    // not trust: the handshake fails, and the connection is logged as intercepted.
    let tcp = tokio::net::TcpStream::connect(proxy.sni_addr())
        .await
        .unwrap();
    let peer = tcp.local_addr().unwrap();
    let handshake =
        tollgate_tests::clients::tls_handshake(tcp, "openrouter.ai", lb.h1.clone()).await;
    assert!(handshake.is_err(), "the per-Pod CA is not this client's");
    let log = proxy.wait_for_peer(peer, SETTLE).await.unwrap();
    assert_eq!(
        (log["route"].as_str(), log["reason"].as_str()),
        (Some("intercept"), Some("tls-handshake-failed")),
        "{log}"
    );
    let log = lb.assert_rejected(&proxy, "allowed.test").await.unwrap();
    assert_eq!(
        (
            log["route"].as_str(),
            log["reason"].as_str(),
            log["phase"].as_str()
        ),
        (Some("reject"), Some("not-allow-listed"), Some("agent")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn options_can_come_from_the_environment() {
    let lb = Loopback::new().await.unwrap();
    let proxy = lb
        .proxy_builder(&lb.policy())
        .unwrap()
        .env("TOLLGATE_MAX_CONNECTIONS", "1")
        .start()
        .await
        .unwrap();
    let mut held = HttpConn::connect(proxy.sni_addr(), "allowed.test", lb.h1.clone())
        .await
        .unwrap();
    assert_eq!(held.get("/").await.unwrap().status, 200);
    proxy
        .wait_for_metric("tollgate_open_connections", &[], SETTLE, |v| v == 1.0)
        .await
        .unwrap();
    let log = lb.assert_rejected(&proxy, "allowed.test").await.unwrap();
    assert_eq!(log["route"], "reject", "{log}");
}
