//! Evidence through the real binary on loopback: a run's hash-chained decision log and receipt
//! verify offline, and stop verifying after a one-byte edit, a dropped line or a swapped pair
//! (each named by line); `tollgate replay` of the run gates a narrowed policy; an observe-mode
//! run's `tollgate suggest` output passes `tollgate check` and replays with nothing refused.
//! Routing here needs no redirect (clients dial the SNI listener), so no namespace is needed.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde_json::Value;
use tollgate_tests::fake_openrouter::{CHAT, ChatScript};
use tollgate_tests::fixture::Loopback;
use tollgate_tests::gateway::{Gateway, MODEL, chat};
use tollgate_tests::policy::PolicySpec;
use tollgate_tests::proxy::{Proxy, tollgate_bin};

const DECISIONS: &str = "proxy_decisions.jsonl";

fn tollgate(args: &[&str]) -> Output {
    std::process::Command::new(tollgate_bin())
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn verify(dir: &Path) -> Output {
    tollgate(&["verify-receipt", dir.to_str().unwrap()])
}

/// Runs a proxy over `spec` writing evidence to `dir`: two tunnels to allowed.test, refusals for
/// other.test (not allow-listed) and denied.test; then SIGTERM (the receipt is written at exit).
async fn record_run(lb: &Loopback, spec: &PolicySpec, dir: &Path, extra: &[&str]) -> Proxy {
    let mut builder = lb
        .proxy_builder(spec)
        .unwrap()
        .arg("--evidence-dir")
        .arg(dir);
    for arg in extra {
        builder = builder.arg(arg);
    }
    let mut proxy = builder.start().await.unwrap();
    let observe = extra.contains(&"--observe");
    for _ in 0..2 {
        lb.assert_tunnels(&proxy, "allowed.test").await.unwrap();
    }
    if observe {
        // Observe mode routes as verification: both tunnel, and record that agent would refuse.
        lb.assert_tunnels(&proxy, "other.test").await.unwrap();
        // An HTTPS query is answered locally in both phases (nothing leaves loopback): empty
        // as verification answers it, where the agent phase would refuse the name.
        let rcode = dns_query(proxy.dns_addrs()[0], "other.test.", RecordType::HTTPS).await;
        assert_eq!(rcode, ResponseCode::NoError, "{}", proxy.describe());
    } else {
        lb.assert_rejected(&proxy, "other.test").await.unwrap();
    }
    lb.assert_rejected(&proxy, "denied.test").await.unwrap();
    let (status, body) = proxy.admin_get("/run_receipt.json").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let live: Value = serde_json::from_str(&body).unwrap();
    // The receipt covers the whole file: earlier runs in `dir` too, four connections each
    // (written or, past the size bound, dropped).
    let runs = live["starts"].as_array().unwrap().len() as u64;
    let seen = live["connections"]["total"].as_u64().unwrap() + live["dropped"].as_u64().unwrap();
    assert_eq!(seen, 4 * runs, "{body}");
    proxy.sigterm().unwrap();
    let exit = proxy.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(exit.success(), "{}", proxy.describe());
    proxy
}

/// Sends one query over UDP to tollgate's DNS listener; the answer's response code.
async fn dns_query(addr: std::net::SocketAddr, name: &str, qtype: RecordType) -> ResponseCode {
    let mut query = Message::new(7, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&query.to_vec().unwrap(), addr)
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("a DNS answer within 5s")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap().metadata.response_code
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(DECISIONS))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A copy of `dir` whose decision log is `lines`.
fn tampered(dir: &Path, lines: &[String]) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let receipt = "run_receipt.json";
    std::fs::copy(dir.join(receipt), copy.path().join(receipt)).unwrap();
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(copy.path().join(DECISIONS), body).unwrap();
    copy
}

fn assert_fails_naming(dir: &Path, what: &str, needle: &str) {
    let out = verify(dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
    assert!(
        stderr.contains(needle),
        "{what}: wanted {needle:?} in {}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runs_receipt_verifies_and_any_edit_drop_or_swap_names_the_line() {
    let lb = Loopback::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let termination_log = dir.path().join("termination-log");
    std::fs::write(&termination_log, "").unwrap();
    let proxy = record_run(
        &lb,
        &lb.policy(),
        dir.path(),
        &["--termination-log", termination_log.to_str().unwrap()],
    )
    .await;

    let out = verify(dir.path());
    assert!(out.status.success(), "{}\n{}", text(&out), proxy.describe());
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run_receipt.json")).unwrap())
            .unwrap();
    let all = lines(dir.path());
    assert_eq!(receipt["records"], all.len() as u64);
    assert_eq!(receipt["connections"]["by_route"]["tunnel"], 2, "{receipt}");
    assert_eq!(
        receipt["connections"]["by_reason"]["denied"], 1,
        "{receipt}"
    );
    assert_eq!(receipt["connections"]["by_reason"]["not-allow-listed"], 1);
    let patterns = receipt["host_patterns"].as_array().unwrap();
    assert!(patterns.contains(&"allowed.test".into()), "{receipt}");
    assert_eq!(receipt["policies"].as_array().unwrap().len(), 1);
    // The launcher's anchor: the head, outside the data dir.
    let head = receipt["head"].as_str().unwrap();
    let message = std::fs::read_to_string(&termination_log).unwrap();
    assert!(
        message.contains(&format!("decisions-head={head}")),
        "{message}"
    );

    // Line 1 start, 2 policy, 3 phase, then the connections: edit the first connection line.
    let conn = all
        .iter()
        .position(|l| l.contains("\"kind\":\"connection\""))
        .unwrap();
    let mut edited = all.clone();
    edited[conn] = edited[conn].replacen("\"bytes_up\":", "\"bytes_up\":1", 1);
    let copy = tampered(dir.path(), &edited);
    let next = conn + 2; // 1-based number of the line after the edited one
    assert_fails_naming(copy.path(), "one-byte edit", &format!("line {next}: prev"));

    let mut last_edited = all.clone();
    let last = last_edited.len() - 1;
    last_edited[last] = last_edited[last].replacen("\"ts_ms\":", "\"ts_ms\":1", 1);
    let copy = tampered(dir.path(), &last_edited);
    assert_fails_naming(
        copy.path(),
        "edit of the last line",
        &format!("line {}", last + 1),
    );

    let mut dropped = all.clone();
    dropped.remove(conn);
    let copy = tampered(dir.path(), &dropped);
    assert_fails_naming(
        copy.path(),
        "dropped line",
        &format!("line {}: seq", conn + 1),
    );

    let mut swapped = all.clone();
    swapped.swap(conn, conn + 1);
    let copy = tampered(dir.path(), &swapped);
    assert_fails_naming(
        copy.path(),
        "swapped pair",
        &format!("line {}: seq", conn + 1),
    );

    let mut truncated = all.clone();
    truncated.pop();
    let copy = tampered(dir.path(), &truncated);
    assert_fails_naming(copy.path(), "dropped last line", "the receipt covers");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_continues_the_chain() {
    let lb = Loopback::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    record_run(&lb, &lb.policy(), dir.path(), &[]).await;
    let first = lines(dir.path()).len();
    record_run(&lb, &lb.policy(), dir.path(), &[]).await;
    let out = verify(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run_receipt.json")).unwrap())
            .unwrap();
    assert_eq!(receipt["starts"].as_array().unwrap().len(), 2, "{receipt}");
    assert_eq!(receipt["connections"]["total"], 8, "{receipt}");
    assert!(lines(dir.path()).len() > first);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_gates_a_narrowed_policy_and_passes_the_same_one() {
    let lb = Loopback::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = lb.policy();
    record_run(&lb, &spec, dir.path(), &[]).await;
    let log = dir.path().join(DECISIONS);
    let log = log.to_str().unwrap();

    let same = lb.dir.path().join("same.toml");
    spec.write(&same).unwrap();
    let out = tollgate(&["replay", "--policy", same.to_str().unwrap(), log]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("newly refused: 0"),
        "{}",
        text(&out)
    );

    let narrowed = lb.dir.path().join("narrowed.toml");
    let port = lb.server.port();
    PolicySpec::new()
        .allow(&["*.wild.test"])
        .deny(&["denied.test"])
        .pin_loopback("allowed.test", port)
        .write(&narrowed)
        .unwrap();
    let out = tollgate(&["replay", "--policy", narrowed.to_str().unwrap(), log]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("newly refused: 2"), "{}", text(&out));
    assert!(
        stdout.contains("allowed.test  reason=not-allow-listed  count=2"),
        "{}",
        text(&out)
    );

    let out = tollgate(&[
        "replay",
        "--format",
        "json",
        "--policy",
        narrowed.to_str().unwrap(),
        log,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["newly_refused"][0]["pattern"], "allowed.test",
        "{report}"
    );
    assert_eq!(report["newly_refused"][0]["reason"], "not-allow-listed");
    assert_eq!(report["replayed"], 4, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn suggest_from_an_observed_run_passes_check_and_replays_with_nothing_refused() {
    let lb = Loopback::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = lb.server.port();
    // Nothing allowed: the agent phase would refuse both hosts; observe mode lets them through.
    let spec = PolicySpec::new()
        .deny(&["denied.test"])
        .pin_loopback("allowed.test", port)
        .pin_loopback("other.test", port)
        .pin_loopback("denied.test", port);
    let proxy = record_run(&lb, &spec, dir.path(), &["--observe"]).await;
    assert!(
        proxy
            .stderr_lines()
            .iter()
            .any(|l| l.contains("OBSERVE MODE")),
        "{}",
        proxy.describe()
    );
    // The observed DNS query is chained with both decisions, and the receipt counts it.
    let dns: Vec<Value> = lines(dir.path())
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "dns")
        .collect();
    assert_eq!(dns.len(), 1, "{dns:?}");
    assert_eq!(dns[0]["name"], "other.test.", "{dns:?}");
    assert_eq!(dns[0]["qtype"], "HTTPS", "{dns:?}");
    assert_eq!(dns[0]["answered"], "empty-type", "{dns:?}");
    assert_eq!(dns[0]["observed"], "not-allow-listed", "{dns:?}");
    let out = verify(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run_receipt.json")).unwrap())
            .unwrap();
    assert_eq!(receipt["dns_observed"]["not-allow-listed"], 1, "{receipt}");
    let mut forged = receipt.clone();
    forged["dns_observed"]["not-allow-listed"] = 0.into();
    let copy = tampered(dir.path(), &lines(dir.path()));
    std::fs::write(
        copy.path().join("run_receipt.json"),
        serde_json::to_vec(&forged).unwrap(),
    )
    .unwrap();
    assert_fails_naming(copy.path(), "forged dns totals", "dns_observed");
    let log = dir.path().join(DECISIONS);
    let log = log.to_str().unwrap();

    let out = tollgate(&["suggest", log]);
    assert!(out.status.success(), "{}", text(&out));
    let suggested = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        suggested.contains("allow = [\"allowed.test\", \"other.test\"]"),
        "{suggested}"
    );
    assert!(
        !suggested.contains("allow = [\"allowed.test\", \"denied.test\""),
        "{suggested}"
    );
    let path = lb.dir.path().join("suggested.toml");
    std::fs::write(&path, &suggested).unwrap();
    let out = tollgate(&["check", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{suggested}", text(&out));

    let out = tollgate(&["replay", "--policy", path.to_str().unwrap(), log]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("newly refused: 0"), "{}", text(&out));
    // What the agent phase refused is what the suggestion opens: exactly the observed hosts.
    assert!(stdout.contains("newly allowed: 3"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_counts_what_it_drops_and_still_verifies() {
    let lb = Loopback::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = record_run(
        &lb,
        &lb.policy(),
        dir.path(),
        &["--evidence-max-bytes", "1KiB"],
    )
    .await;
    let out = verify(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the log is incomplete"),
        "{}",
        text(&out)
    );
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run_receipt.json")).unwrap())
            .unwrap();
    let dropped = receipt["dropped"].as_u64().unwrap();
    let written = receipt["connections"]["total"].as_u64().unwrap();
    assert!(dropped > 0, "{receipt}");
    assert_eq!(
        dropped + written,
        4,
        "every connection is either written or counted: {receipt}"
    );
    assert!(std::fs::metadata(dir.path().join(DECISIONS)).unwrap().len() <= 1024 + 512);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_requests_are_chained_and_summed_by_model() {
    let gw = Gateway::new().await.unwrap();
    let mut run = gw.start(&gw.spec()).await.unwrap();
    let ok = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(ok.status, 200, "{}\n{}", ok.text(), run.proxy.describe());
    let refused = run
        .client()
        .post_json("/api/v1/not-an-endpoint", &chat(MODEL))
        .await
        .unwrap();
    assert!(refused.status >= 400, "{}", refused.text());
    run.proxy.sigterm().unwrap();
    assert!(
        run.proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap()
            .success()
    );
    let dir = gw.data_dir();
    let out = verify(&dir);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        run.proxy.describe()
    );
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(dir.join("run_receipt.json")).unwrap()).unwrap();
    let llm = &receipt["llm"];
    assert_eq!(llm["requests"], 2, "{receipt}");
    assert_eq!(llm["refused"], 1, "{receipt}");
    assert_eq!(llm["by_model"][MODEL]["requests"], 1, "{receipt}");
    // The fake answers as the requested model; the refused request was served by nothing.
    assert_eq!(llm["by_served_model"][MODEL]["requests"], 1, "{receipt}");
    assert_eq!(
        llm["by_served_model"].as_object().unwrap().len(),
        1,
        "{receipt}"
    );
    assert_eq!(
        llm["by_model"][MODEL]["charged_micros"], llm["spent_micros"],
        "{receipt}"
    );
    assert!(llm["budget_micros"].as_u64().unwrap() > 0, "{receipt}");
    assert_eq!(
        receipt["connections"]["by_route"]["intercept"], 2,
        "{receipt}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_versions_and_phase_changes_are_in_the_receipt() {
    let lb = Loopback::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = lb.policy();
    let mut proxy = lb
        .proxy_builder(&first)
        .unwrap()
        .arg("--evidence-dir")
        .arg(dir.path())
        .start()
        .await
        .unwrap();
    let second = lb.policy().allow(&["extra.test"]);
    lb.write_policy(&second).unwrap();
    let settle = tollgate_tests::fixture::SETTLE;
    proxy
        .wait_for_metric(
            "tollgate_policy_reloads_total",
            &[("result", "ok")],
            settle,
            |v| v >= 1.0,
        )
        .await
        .unwrap();
    std::fs::write(
        proxy.labels_file(),
        tollgate_tests::policy::labels_file_body(Some("verification")),
    )
    .unwrap();
    proxy
        .wait_for_metric(
            "tollgate_phase",
            &[("phase", "verification")],
            settle,
            |v| v == 1.0,
        )
        .await
        .unwrap();
    proxy.sigterm().unwrap();
    assert!(
        proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap()
            .success()
    );

    let out = verify(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run_receipt.json")).unwrap())
            .unwrap();
    let sha = |spec: &PolicySpec| {
        let digest = ring::digest::digest(&ring::digest::SHA256, spec.to_toml().as_bytes());
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let policies: Vec<&str> = receipt["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(policies, [sha(&first), sha(&second)], "{receipt}");
    let phases: Vec<(&Value, &Value)> = receipt["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p["to"], &p["source"]))
        .collect();
    assert_eq!(phases.len(), 2, "{receipt}");
    assert_eq!(
        (phases[0].0, phases[1].0),
        (&"agent".into(), &"verification".into())
    );
    assert_eq!(phases[1].1, "label");
}

/// A request served by a fallback provider the recording policy allowed: replay under a
/// candidate forcing `order = ["openai"]` without fallbacks counts it newly refused (the
/// gateway's own served check), and under the recording policy it counts nothing.
#[tokio::test(flavor = "multi_thread")]
async fn replay_flags_a_served_provider_the_candidate_forbids() {
    let gw = Gateway::new().await.unwrap();
    let spec = gw.spec();
    let mut run = gw.start(&spec).await.unwrap();
    gw.fake
        .set_chat(ChatScript::default().served_provider("Azure"));
    let ok = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(ok.status, 200, "{}\n{}", ok.text(), run.proxy.describe());
    run.proxy.sigterm().unwrap();
    assert!(
        run.proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap()
            .success()
    );
    let log = gw.data_dir().join(DECISIONS);
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert!(
        recorded.contains("\"served_provider\":\"Azure\""),
        "{recorded}"
    );
    let log = log.to_str().unwrap();

    let same = gw.data_dir().join("same.toml");
    std::fs::write(&same, spec.to_toml()).unwrap();
    let out = tollgate(&["replay", "--policy", same.to_str().unwrap(), log]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("newly refused: 0"),
        "{}",
        text(&out)
    );

    let strict = gw.data_dir().join("strict.toml");
    let candidate = spec
        .set("intercept.provider", "order", serde_json::json!(["openai"]))
        .set("intercept.provider", "allow_fallbacks", false);
    std::fs::write(&strict, candidate.to_toml()).unwrap();
    let out = tollgate(&["replay", "--policy", strict.to_str().unwrap(), log]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("newly refused: 1"), "{}", text(&out));
    assert!(
        stdout.contains("served-provider:Azure  reason=served-provider-violation  count=1"),
        "{}",
        text(&out)
    );
}
