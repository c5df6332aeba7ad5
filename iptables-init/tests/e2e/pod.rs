//! The whole Pod picture in one namespace: `tollgate-init` installs and self-tests the rules
//! before the proxy runs (as in an init container); then `tollgate` runs as UID 1337 and an
//! "agent" (curl as UID 65534) reaches only what the policy allows, over IPv4 and IPv6:
//! an allowed host (pinned to a local `openssl s_server` on a TEST-NET address) goes through
//! the proxy and shows in its metrics; a denied host fails; UDP/443 is rejected; TCP/80 is
//! rejected in the agent phase and passed through to its original destination once the phase
//! flips to verification.
//!
//! Needs the `tollgate` binary with its capture router (`--capture-listen`): `$TOLLGATE_BIN`, or
//! `target/<profile>/tollgate` as `cargo test --workspace` builds it; plus curl and openssl.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{Netns, Run, V4_B, V6_B, VETH_B, binary, copy_for_everyone, require_root, sock};

const AGENT: [&str; 7] = [
    "setpriv",
    "--reuid",
    "65534",
    "--regid",
    "65534",
    "--clear-groups",
    "--",
];
const UPSTREAM_PORT: u16 = 8443;

/// The tollgate binary, or why the test cannot run.
fn tollgate_binary() -> Result<PathBuf, String> {
    let path = match std::env::var_os("TOLLGATE_BIN") {
        Some(p) => PathBuf::from(p),
        // target/<profile>/deps/e2e-<hash> → target/<profile>/tollgate
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("tollgate"))
            .ok_or("no target directory")?,
    };
    if !path.is_file() {
        return Err(format!(
            "{} not found: run `cargo build -p tollgate` (or set TOLLGATE_BIN)",
            path.display()
        ));
    }
    let help = Command::new(&path)
        .arg("--help")
        .output()
        .map_err(|e| e.to_string())?;
    if !String::from_utf8_lossy(&help.stdout).contains("--capture-listen") {
        return Err(format!(
            "{} has no --capture-listen (the :15001 router): rebuild it",
            path.display()
        ));
    }
    for tool in ["curl", "openssl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(path)
}

/// Kills the child (and waits) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain-HTTP listener answering `hello-capture` until dropped (the TCP/80 destination).
struct HttpServer(Arc<AtomicBool>);

impl HttpServer {
    fn start(listener: TcpListener) -> HttpServer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nhello-capture");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        HttpServer(stop)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Pod {
    // Drop order: processes before the namespace.
    _proxy: Killed,
    _tls: Vec<Killed>,
    _http: HttpServer,
    log: PathBuf,
    cert: PathBuf,
    unlock: PathBuf,
    _dir: tempfile::TempDir,
    ns: Netns,
}

impl Pod {
    fn start(tollgate: &Path) -> Pod {
        let ns = Netns::new();
        // A Pod has a default route; without one, connects fail before netfilter sees them.
        ns.ok(&["ip", "route", "add", "default", "dev", VETH_B]);
        ns.ok(&["ip", "-6", "route", "add", "default", "dev", VETH_B]);

        // 1. The init container, before the proxy exists: install and self-test.
        let init = ns.init_ok(&[]);
        assert!(
            init.stdout.contains("installed and self-tested") && !init.stdout.contains("skip"),
            "{init}"
        );

        // 2. Everything the other UIDs read lives in one 0755 directory.
        let dir = tempfile::Builder::new()
            .prefix("tollgate-init-pod-")
            .tempdir()
            .unwrap();
        let tollgate = copy_for_everyone(tollgate, dir.path());
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let keygen: Run = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
            ])
            .args([
                "-subj",
                "/CN=allowed.test",
                "-addext",
                "subjectAltName=DNS:allowed.test,DNS:v6.test,DNS:denied.test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap()
            .into();
        assert_eq!(keygen.code, 0, "{keygen}");
        let tls = [
            format!("{V4_B}:{UPSTREAM_PORT}"),
            format!("[{V6_B}]:{UPSTREAM_PORT}"),
        ]
        .into_iter()
        .map(|accept| {
            let child = ns
                .cmd("openssl")
                .args(["s_server", "-quiet", "-www", "-accept", &accept])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Killed(child)
        })
        .collect();
        let http = HttpServer::start(ns.bind(sock(V4_B, 80)));

        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                r#"version = 1
[tunnel]
allow = ["allowed.test", "v6.test"]
deny = ["denied.test"]
[hosts."allowed.test"]
pin = ["{V4_B}"]
port = {UPSTREAM_PORT}
[hosts."v6.test"]
pin = ["{V6_B}"]
port = {UPSTREAM_PORT}
[hosts."denied.test"]
pin = ["{V4_B}"]
port = {UPSTREAM_PORT}
"#
            ),
        )
        .unwrap();
        for f in [&policy, &cert] {
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }

        // 3. The proxy as UID 1337, on the ports the rules redirect to.
        let log = dir.path().join("tollgate.log");
        let unlock = dir.path().join("egress-unlocked");
        let proxy = ns
            .cmd("setpriv")
            .args(["--reuid", "1337", "--regid", "1337", "--clear-groups", "--"])
            .arg(&tollgate)
            .arg("--policy")
            .arg(&policy)
            .args(["--listen", "0.0.0.0:15443", "--listen", "[::]:15443"])
            .args([
                "--capture-listen",
                "0.0.0.0:15001",
                "--capture-listen",
                "[::]:15001",
            ])
            .args(["--admin-listen", "127.0.0.1:15090", "--log-format", "json"])
            .arg("--unlock-file")
            .arg(&unlock)
            .arg("--labels-file")
            .arg(dir.path().join("no-labels"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pod = Pod {
            _proxy: Killed(proxy),
            _tls: tls,
            _http: http,
            log,
            cert,
            unlock,
            _dir: dir,
            ns,
        };
        pod.wait_for(|p| p.admin("/readyz").code == 0, "tollgate ready");
        // Root's own connects are redirected too, so ask the kernel whether s_server listens.
        let listening = |p: &Pod| {
            let ss =
                p.ns.run(&["ss", "-Hltn", &format!("sport = :{UPSTREAM_PORT}")]);
            ss.stdout.lines().count() == 2
        };
        pod.wait_for(listening, "openssl s_server listening");
        pod
    }

    fn admin(&self, path: &str) -> Run {
        self.ns.run(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:15090{path}"),
        ])
    }

    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.admin("/metrics").stdout;
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn wait_for(&self, ok: impl Fn(&Pod) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "{what} not reached in 10 s\n{}",
                self.proxy_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn proxy_log(&self) -> String {
        format!(
            "--- tollgate log\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// curl as the agent (UID 65534), `host` resolved to `addr` (any routable address: it is
    /// redirected before it leaves).
    fn agent_curl(&self, url: &str, resolve: Option<&str>) -> Run {
        let mut args: Vec<String> = AGENT.iter().map(ToString::to_string).collect();
        args.extend(["curl", "-sS", "--max-time", "5", "--cacert"].map(String::from));
        args.push(self.cert.display().to_string());
        if let Some(r) = resolve {
            args.extend(["--resolve".to_string(), r.to_string()]);
        }
        args.push(url.to_string());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ns.run(&argv)
    }

    /// The self-test's UDP probe, as the agent.
    fn agent_udp(&self, to: &str) -> Run {
        let bin = binary().display().to_string();
        let mut argv: Vec<&str> = AGENT.to_vec();
        argv.extend([bin.as_str(), "__probe", "--proto", "udp", "--connect", to]);
        self.ns.run(&argv)
    }
}

#[test]
fn whole_pod_agent_reaches_only_what_the_policy_allows() {
    if !require_root() {
        return;
    }
    let tollgate = match tollgate_binary() {
        Ok(p) => p,
        Err(why) if std::env::var("TOLLGATE_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") => {
            panic!("{why}")
        }
        Err(why) => return eprintln!("SKIPPED (whole Pod): {why}"),
    };
    let pod = Pod::start(&tollgate);
    let ctx = |r: &Run| format!("{r}\n{}", pod.proxy_log());

    // Allowed host, IPv4 and IPv6 (the agent dials TEST-NET-2/-3 style addresses that exist
    // nowhere: only the redirect gets it to the proxy, which dials the pinned upstream).
    for (url, resolve) in [
        ("https://allowed.test/", "allowed.test:443:198.51.100.10"),
        ("https://v6.test/", "v6.test:443:[2001:db8:1::10]"),
        ("https://allowed.test/", "allowed.test:443:[2001:db8:1::10]"),
    ] {
        let r = pod.agent_curl(url, Some(resolve));
        assert_eq!(r.code, 0, "{url} via {resolve}: {}", ctx(&r));
        assert!(r.stdout.contains("<HTML>"), "{}", ctx(&r));
    }
    assert_eq!(
        pod.metric(
            "tollgate_connections_total",
            &["route=\"tunnel\"", "allowed.test"]
        ),
        2.0
    );
    assert_eq!(
        pod.metric(
            "tollgate_connections_total",
            &["route=\"tunnel\"", "v6.test"]
        ),
        1.0
    );

    // Denied host and an unlisted one: no TLS session.
    for (url, resolve) in [
        ("https://denied.test/", "denied.test:443:198.51.100.10"),
        ("https://other.test/", "other.test:443:[2001:db8:1::10]"),
    ] {
        let r = pod.agent_curl(url, Some(resolve));
        assert_ne!(r.code, 0, "{url} must fail: {}", ctx(&r));
    }
    assert_eq!(
        pod.metric("tollgate_connections_total", &["route=\"reject\""]),
        2.0,
        "{}",
        pod.proxy_log()
    );

    // UDP/443 (QUIC) is rejected by the fence, both families.
    for to in ["198.51.100.10:443", "[2001:db8:1::10]:443"] {
        let r = pod.agent_udp(to);
        assert_eq!(r.stdout.trim(), "rejected", "udp {to}: {r}");
    }

    // TCP/80 goes to the capture router: rejected in the agent phase and counted by port...
    let plain = format!("http://{V4_B}/");
    let r = pod.agent_curl(&plain, None);
    assert_ne!(r.code, 0, "agent phase: {}", ctx(&r));
    assert!(!r.stdout.contains("hello-capture"), "{}", ctx(&r));
    pod.wait_for(
        |p| p.metric("tollgate_capture_rejections_total", &["port=\"80\""]) == 1.0,
        "capture rejection",
    );

    // ...and passed through to its original destination once the phase is verification.
    std::fs::write(&pod.unlock, "").unwrap();
    pod.wait_for(
        |p| p.metric("tollgate_phase", &["phase=\"verification\""]) == 1.0,
        "verification phase",
    );
    let r = pod.agent_curl(&plain, None);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "hello-capture"),
        "verification phase: {}",
        ctx(&r)
    );

    // The installed rules are still exactly right while the proxy runs (verify probes it live).
    let v = pod.ns.init_ok(&["verify"]);
    assert!(
        v.stdout
            .contains("accepted by the running listener on :15443 (uid 1337)"),
        "{v}"
    );
}
