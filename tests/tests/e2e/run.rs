//! `tollgate run -- CMD`, end to end (root only). Each test makes a namespace (the "host" of the
//! run) with a veth whose `.2` end serves the world: a TLS origin for `allowed.test` and
//! `open.test`, the fake OpenRouter, a fake resolver, a plain TCP listener and a UDP socket, all
//! on 192.0.2.2 and pinned in the policy. The real binary runs as
//! `ip netns exec NS tollgate run ... -- CMD` with curl, dig and sh as CMD, so no packet leaves
//! namespaces the test made. What these tests prove: the allowed host is reached and nothing
//! else (another SNI, other TCP, UDP, a refused name's DNS); an LLM request goes through the
//! gateway and its spend is in the summary; exit codes and signals pass through; SIGUSR1
//! switches the phase; the run leaves no network state behind, also after `kill -9`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tollgate_tests::fake_dns::FakeResolver;
use tollgate_tests::fake_openrouter::FakeOpenRouter;
use tollgate_tests::netns::{Netns, V4_B, sock};
use tollgate_tests::pki::Ca;
use tollgate_tests::proxy::tollgate_bin;
use tollgate_tests::tls_server::TlsServer;
use tollgate_tests::{eventually, require_root};

const MODEL: &str = "openai/gpt-4o-mini";

/// The run's host namespace and the world on its veth.
struct World {
    ns: Netns,
    _resolv: RemoveDir,
    dir: tempfile::TempDir,
    ca: Ca,
    origin: TlsServer,
    fake: FakeOpenRouter,
    resolver: FakeResolver,
    tcp: std::net::TcpListener,
    udp: std::net::UdpSocket,
    policy: PathBuf,
    runs: std::sync::atomic::AtomicU32,
}

/// `/etc/netns/<ns>`, which `ip netns exec` mounts over /etc (resolv.conf); removed on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One finished `tollgate run`.
struct Run {
    out: Output,
    data: PathBuf,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("tollgate.log")).unwrap_or_default()
    }
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- log\n{}",
            self.code(),
            self.stdout(),
            self.stderr(),
            self.log()
        )
    }
}

impl World {
    async fn new() -> World {
        let ns = Netns::new().unwrap();
        ns.veth().unwrap();
        let etc = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {V4_B}\noptions timeout:2 attempts:1\n"),
        )
        .unwrap();
        let resolv = RemoveDir(etc);
        let ca = Ca::new().unwrap();
        let origin = TlsServer::start_std(
            ns.bind_tcp(sock(V4_B, 443)).unwrap(),
            "origin",
            ca.server_config(&["allowed.test", "open.test", "refused.test"])
                .unwrap(),
        )
        .unwrap();
        let fake_listener = ns.bind_tcp(sock(V4_B, 0)).unwrap();
        fake_listener.set_nonblocking(true).unwrap();
        let fake =
            FakeOpenRouter::start_on(tokio::net::TcpListener::from_std(fake_listener).unwrap())
                .unwrap();
        let resolver = FakeResolver::start(
            vec![ns.bind_udp(sock(V4_B, 53)).unwrap()],
            vec![ns.bind_tcp(sock(V4_B, 53)).unwrap()],
            &[("allowed.test", "192.0.2.2"), ("refused.test", "192.0.2.2")],
        )
        .unwrap();
        let tcp = ns.bind_tcp(sock(V4_B, 2222)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = ns.bind_udp(sock(V4_B, 5353)).unwrap();
        udp.set_nonblocking(true).unwrap();

        // CMD runs as nobody: the directory (and the data directories in it) must be readable.
        let dir = tempfile::Builder::new()
            .prefix("tollgate-run-test-")
            .tempdir()
            .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let policy = dir.path().join("policy.toml");
        let port = fake.port();
        let fake_ca = fake.ca_pem_path().display().to_string();
        std::fs::write(
            &policy,
            format!(
                r#"version = 1
phase = "agent"

[tunnel]
allow = ["allowed.test"]

[intercept]
hosts = ["openrouter.ai"]
upstream = "https://openrouter.ai:{port}"
extra_ca_file = "{fake_ca}"
connect_timeout = "2s"

[intercept.pricing]
fetch = false

[intercept.pricing.models."{MODEL}"]
prompt = "0.000001"
completion = "0.00002"

[hosts."allowed.test"]
pin = ["192.0.2.2"]
allow_ranges = ["192.0.2.0/24"]

[hosts."open.test"]
pin = ["192.0.2.2"]
allow_ranges = ["192.0.2.0/24"]

[hosts."openrouter.ai"]
pin = ["192.0.2.2"]
port = {port}
allow_ranges = ["192.0.2.0/24"]
"#
            ),
        )
        .unwrap();
        World {
            ns,
            _resolv: resolv,
            dir,
            ca,
            origin,
            fake,
            resolver,
            tcp,
            udp,
            policy,
            runs: Default::default(),
        }
    }

    /// `ip netns exec NS tollgate run --policy P --data-dir D <extra> -- <cmd>`, not started.
    fn command(&self, extra: &[&str], cmd: &[&str]) -> (tokio::process::Command, PathBuf) {
        self.command_as(None, extra, cmd)
    }

    /// [`World::command`], as `uid` (rootless mode) when given: through `setpriv`, with a data
    /// directory that UID owns.
    fn command_as(
        &self,
        uid: Option<u32>,
        extra: &[&str],
        cmd: &[&str],
    ) -> (tokio::process::Command, PathBuf) {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let data = self.dir.path().join(format!("data-{n}"));
        let mut c = match uid {
            None => self.ns.command(tollgate_bin().to_str().unwrap()),
            Some(uid) => {
                std::fs::create_dir(&data).unwrap();
                nix::unistd::chown(&data, Some(uid.into()), Some(uid.into())).unwrap();
                let mut c = self.ns.command("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(tollgate_bin());
                c
            }
        };
        c.arg("run")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .arg("--")
            .args(cmd);
        for name in tollgate_tests::gateway::REFERENCE_ENV {
            c.env_remove(name);
        }
        c.env_remove("RUST_LOG");
        let mut c = tokio::process::Command::from(c);
        c.kill_on_drop(true).stdin(std::process::Stdio::null());
        (c, data)
    }

    /// Runs to completion (bounded).
    async fn run(&self, extra: &[&str], cmd: &[&str]) -> Run {
        let (mut c, data) = self.command(extra, cmd);
        let out = tokio::time::timeout(Duration::from_secs(60), c.output())
            .await
            .expect("tollgate run did not finish within 60 s")
            .unwrap();
        Run { out, data }
    }

    /// `sh -c script` as CMD.
    async fn sh(&self, script: &str) -> Run {
        self.run(&["--budget-usd", "1"], &["sh", "-c", script])
            .await
    }

    fn ca_pem(&self) -> String {
        self.ca.pem_path().display().to_string()
    }

    /// The run's host namespace as text: links, addresses, routes, and every iptables table of
    /// both backends and families (counters dropped).
    fn network_state(&self) -> String {
        let mut out = String::new();
        for args in [
            &["-d", "link", "show"][..],
            &["addr", "show"],
            &["route", "show"],
            &["-6", "route", "show"],
        ] {
            let o = self.ns.ip(args).unwrap();
            // Duplicate address detection finishes on its own time: not state the run made.
            out.push_str(&String::from_utf8_lossy(&o.stdout).replace(" tentative", ""));
        }
        for tool in [
            "iptables-nft-save",
            "ip6tables-nft-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ] {
            let o = self.ns.exec(&[tool]).unwrap();
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if line.starts_with('#') {
                    continue;
                }
                let line = match line.split_once(" [") {
                    Some((head, _)) if line.starts_with(':') => head.to_owned(),
                    _ => line.to_owned(),
                };
                out.push_str(&format!("{tool}: {line}\n"));
            }
        }
        out
    }
}

/// The pid in the `command started pid=N` log line, once it is there.
fn started_pid(data: &Path) -> Option<i32> {
    let log = std::fs::read_to_string(data.join("tollgate.log")).ok()?;
    let line = log.lines().find(|l| l.contains("command started"))?;
    line.split("pid=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Fails with the lines that differ.
fn assert_same(before: &str, after: &str, what: &str) {
    let gone: Vec<&str> = before.lines().filter(|l| !after.contains(l)).collect();
    let new: Vec<&str> = after.lines().filter(|l| !before.contains(l)).collect();
    assert!(
        before == after,
        "{what} left state behind\n--- gone\n{}\n--- new\n{}\n--- after\n{after}",
        gone.join("\n"),
        new.join("\n")
    );
}

/// Kills a pid on drop: a failing test must not leave CMD behind.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purpose (it holds no namespace).
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowed_host_is_reached_and_nothing_else() {
    if !require_root() {
        return;
    }
    let w = World::new().await;
    let ca = w.ca_pem();
    let script = format!(
        "curl -sS -m 10 --cacert {ca} --resolve allowed.test:443:203.0.113.5 https://allowed.test/ -o /dev/null -w 'allowed=%{{http_code}}\\n'
         curl -sS -m 10 --cacert {ca} --resolve refused.test:443:192.0.2.2 https://refused.test/ -o /dev/null -w 'refused=%{{http_code}}\\n'
         curl -sS -m 10 http://192.0.2.2:2222/ -o /dev/null -w 'tcp=%{{http_code}}\\n'
         dig +tries=1 +time=2 @192.0.2.2 -p 5353 allowed.test >/dev/null; echo udp=$?
         echo dns-allowed=$(dig +short +tries=1 +time=3 allowed.test)
         dig +tries=1 +time=3 refused.test | grep -o 'status: [A-Z]*'
         id -u
         ip link set lo down 2>/dev/null; echo lo-down=$?
         exit 0"
    );
    let run = w.sh(&script).await;
    let out = run.stdout();
    let why = run.describe();
    assert_eq!(run.code(), Some(0), "{why}");
    assert!(out.contains("allowed=200"), "{why}");
    assert!(out.contains("refused=000"), "{why}");
    assert!(out.contains("tcp=000"), "{why}");
    assert!(!out.contains("udp=0"), "UDP got an answer: {why}");
    assert!(out.contains("dns-allowed=192.0.2.2"), "{why}");
    assert!(out.contains("status: NXDOMAIN"), "{why}");
    assert!(out.contains("65534"), "CMD must run as nobody: {why}");
    assert!(
        !out.contains("lo-down=0"),
        "CMD could change the sandbox: {why}"
    );
    // What reached the world: the allowed SNI only, no TCP on 2222, no UDP on 5353, the
    // allowed name's query only.
    let snis = w.origin.stats().snis();
    assert_eq!(snis, vec![Some("allowed.test".to_owned())], "{why}");
    assert!(
        w.tcp.accept().is_err(),
        "other TCP reached the world: {why}"
    );
    let mut buf = [0u8; 512];
    assert!(
        w.udp.recv(&mut buf).is_err(),
        "UDP reached the world: {why}"
    );
    assert!(w.resolver.saw("allowed.test"), "{why}");
    assert!(
        !w.resolver.saw("refused.test"),
        "a refused name left: {why}"
    );
    // The summary names the refused destinations.
    let err = run.stderr();
    assert!(err.contains("tollgate run: summary"), "{why}");
    assert!(err.contains("refused.test ×1"), "{why}");
    assert!(err.contains("192.0.2.2:2222 ×1"), "{why}");
    assert!(err.contains("not-allow-listed"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_request_goes_through_the_gateway_and_its_spend_is_summarised() {
    if !require_root() {
        return;
    }
    let w = World::new().await;
    // No --cacert: CMD trusts the per-run CA through CURL_CA_BUNDLE, which tollgate run sets.
    let script = format!(
        "echo ca=$CURL_CA_BUNDLE; curl -sS -m 20 --resolve openrouter.ai:443:203.0.113.7 https://openrouter.ai/api/v1/chat/completions \
         -H 'Authorization: Bearer sk-test' -H 'Content-Type: application/json' \
         -d '{{\"model\":\"{MODEL}\",\"max_tokens\":100,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}' \
         -o /dev/null -w 'llm=%{{http_code}}\\n'"
    );
    let run = w.sh(&script).await;
    let why = run.describe();
    assert_eq!(run.code(), Some(0), "{why}");
    assert!(run.stdout().contains("llm=200"), "{why}");
    assert!(
        run.stdout().contains("certs/ca-bundle.crt"),
        "CURL_CA_BUNDLE not set: {why}"
    );
    assert_eq!(
        w.fake.requests_to("/api/v1/chat/completions").len(),
        1,
        "{why}"
    );
    let err = run.stderr();
    assert!(err.contains("llm: 1 request(s) forwarded"), "{why}");
    assert!(err.contains("spend $0.001230 of $1.000000"), "{why}");
    let usage = std::fs::read_to_string(run.data.join("proxy_usage.json")).unwrap();
    assert!(usage.contains("0.00123"), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals_pass_through() {
    if !require_root() {
        return;
    }
    let w = World::new().await;
    let run = w.sh("exit 7").await;
    assert_eq!(run.code(), Some(7), "{}", run.describe());
    let run = w.sh("kill -KILL $$").await;
    assert_eq!(run.code(), Some(137), "{}", run.describe());
    let run = w.run(&[], &["/nonexistent/cmd"]).await;
    assert_eq!(run.code(), Some(127), "{}", run.describe());

    // SIGTERM to tollgate run reaches CMD, whose death by it is the exit code.
    let (mut c, data) = w.command(&[], &["sleep", "30"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let tollgate = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    eventually(Duration::from_secs(20), "the command to start", || async {
        started_pid(&data)
    })
    .await
    .unwrap();
    nix::sys::signal::kill(tollgate, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(143), "SIGTERM was not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_switches_to_the_verification_phase() {
    if !require_root() {
        return;
    }
    let w = World::new().await;
    let ca = w.ca_pem();
    // open.test is not on the allow list: refused in the agent phase, tunnelled after the flip.
    let script = format!(
        "for i in $(seq 100); do
           code=$(curl -s -m 5 --cacert {ca} --resolve open.test:443:203.0.113.9 https://open.test/ -o /dev/null -w '%{{http_code}}')
           [ \"$code\" = 200 ] && echo open-after=$i && exit 0
           sleep 0.2
         done; exit 1"
    );
    let (mut c, data) = w.command(&[], &["sh", "-c", &script]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let tollgate = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    let log = data.join("tollgate.log");
    eventually(
        Duration::from_secs(20),
        "a refusal of open.test",
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("sni=\"open.test\" route=\"reject\"")
                .then_some(())
        },
    )
    .await
    .unwrap();
    nix::sys::signal::kill(tollgate, nix::sys::signal::Signal::SIGUSR1).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let run = Run { out, data };
    let why = run.describe();
    assert_eq!(run.code(), Some(0), "{why}");
    assert!(run.stdout().contains("open-after="), "{why}");
    assert!(run.log().contains("phase"), "{why}");
    assert!(run.data.join("verification").exists(), "{why}");
    assert!(run.stderr().contains("verification-open"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_state_is_left_after_exit_or_kill_9() {
    if !require_root() {
        return;
    }
    let w = World::new().await;
    let before = w.network_state();
    let run = w.sh("true").await;
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_same(&before, &w.network_state(), "a normal exit");

    let (mut c, data) = w.command(&[], &["sleep", "1000"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let tollgate = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    let cmd = eventually(Duration::from_secs(20), "the command to start", || async {
        started_pid(&data)
    })
    .await
    .unwrap();
    let _cleanup = KillOnDrop(cmd);
    let sandbox = std::fs::read_link(format!("/proc/{cmd}/ns/net")).unwrap();
    let outer = std::fs::read_link(format!("/proc/{}/ns/net", tollgate.as_raw())).unwrap();
    assert_ne!(sandbox, outer, "CMD must run in its own network namespace");
    nix::sys::signal::kill(tollgate, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = child.wait().await;
    eventually(
        Duration::from_secs(10),
        "CMD to die with tollgate run",
        || async { (!alive(cmd)).then_some(()) },
    )
    .await
    .unwrap();
    // Nothing holds the sandbox namespace any more, and the host namespace is as it was.
    let holders: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("ns/net")).is_ok_and(|l| l == sandbox))
        .map(|e| e.file_name())
        .collect();
    assert!(
        holders.is_empty(),
        "processes still in the sandbox: {holders:?}"
    );
    assert_same(&before, &w.network_state(), "kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootless_the_same_boundary_as_an_unprivileged_user() {
    if !require_root() {
        return;
    }
    let w = World::new().await;
    let ca = w.ca_pem();
    let script = format!(
        "curl -sS -m 10 --cacert {ca} --resolve allowed.test:443:203.0.113.5 https://allowed.test/ -o /dev/null -w 'allowed=%{{http_code}}\\n'
         curl -sS -m 10 --cacert {ca} --resolve refused.test:443:192.0.2.2 https://refused.test/ -o /dev/null -w 'refused=%{{http_code}}\\n'
         curl -sS -m 10 http://192.0.2.2:2222/ -o /dev/null -w 'tcp=%{{http_code}}\\n'
         dig +tries=1 +time=2 @192.0.2.2 -p 5353 allowed.test >/dev/null; echo udp=$?
         dig +tries=1 +time=3 refused.test | grep -o 'status: [A-Z]*'
         ip link set lo down 2>/dev/null; echo lo-down=$?
         exit 5"
    );
    let (mut c, data) = w.command_as(Some(65534), &[], &["sh", "-c", &script]);
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .unwrap()
        .unwrap();
    let run = Run { out, data };
    let why = run.describe();
    let out = run.stdout();
    assert_eq!(run.code(), Some(5), "{why}");
    assert!(run.log().contains("rootless=true"), "{why}");
    assert!(out.contains("allowed=200"), "{why}");
    assert!(out.contains("refused=000"), "{why}");
    assert!(out.contains("tcp=000"), "{why}");
    assert!(!out.contains("udp=0"), "UDP got an answer: {why}");
    assert!(out.contains("status: NXDOMAIN"), "{why}");
    assert!(
        !out.contains("lo-down=0"),
        "CMD kept capabilities over the sandbox: {why}"
    );
    assert_eq!(
        w.origin.stats().snis(),
        vec![Some("allowed.test".to_owned())],
        "{why}"
    );
    assert!(
        w.tcp.accept().is_err(),
        "other TCP reached the world: {why}"
    );
    assert!(!w.resolver.saw("refused.test"), "{why}");
}
