//! The real `tollgate` binary as a child process: started with ephemeral ports, its JSON log read
//! from stderr on a background thread (every line kept), its ports learnt from the `listening`
//! lines, its `/metrics` scraped over plain HTTP. Killed on drop; if the test is failing, its
//! whole log is printed first.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use crate::scrape::{metric_value, parse_http_response};
use serde_json::Value;

/// How long the proxy may take to log its `listening` lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tollgate` binary: `$TOLLGATE_BIN`, else `target/<profile>/tollgate` next to the test
/// executable's `deps/` directory. Panics with a hint when it is missing.
pub fn tollgate_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = locate_bin();
        warn_if_stale(&bin);
        bin
    })
    .clone()
}

fn locate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/debug/deps/<test>-<hash> → target/debug/tollgate
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("tollgate"));
    match candidate {
        Some(p) if p.is_file() => p,
        other => panic!(
            "tollgate binary not found (looked at {other:?}; set TOLLGATE_BIN to override): \
             run `cargo build -p tollgate` or `cargo test --workspace`"
        ),
    }
}

/// `cargo test -p tollgate-tests` alone does not rebuild the binary: say so when its sources
/// are newer, rather than let a test fail against old code.
fn warn_if_stale(bin: &Path) {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut newest = None;
    let mut stack = vec![root.join("proxy/src"), root.join("policy/src")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                match entry.metadata().and_then(|m| m.modified()) {
                    Ok(m) if m > built && newest.as_ref().is_none_or(|(t, _)| m > *t) => {
                        newest = Some((m, path));
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some((_, path)) = newest {
        eprintln!(
            "WARNING: {} is older than {}: run `cargo build -p tollgate` (or `cargo test --workspace`)",
            bin.display(),
            path.display()
        );
    }
}

/// Options for starting the proxy; defaults suit a loopback test.
pub struct ProxyBuilder {
    listen: Vec<String>,
    admin_listen: String,
    capture_listen: Vec<String>,
    dns_listen: Vec<String>,
    run_as: Option<u32>,
    policy: Option<PathBuf>,
    labels_file: Option<PathBuf>,
    unlock_file: Option<PathBuf>,
    extra: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    netns: Option<String>,
}

impl Default for ProxyBuilder {
    fn default() -> ProxyBuilder {
        ProxyBuilder {
            listen: Vec::new(),
            admin_listen: "127.0.0.1:0".into(),
            capture_listen: Vec::new(),
            dns_listen: Vec::new(),
            run_as: None,
            policy: None,
            labels_file: None,
            unlock_file: None,
            extra: Vec::new(),
            envs: Vec::new(),
            netns: None,
        }
    }
}

impl ProxyBuilder {
    /// `--policy FILE` (without it the proxy uses its embedded default).
    pub fn policy(mut self, path: impl AsRef<Path>) -> ProxyBuilder {
        self.policy = Some(path.as_ref().to_path_buf());
        self
    }

    /// Adds a `--listen ADDR` (default when none: `127.0.0.1:0`).
    pub fn listen(mut self, addr: &str) -> ProxyBuilder {
        self.listen.push(addr.into());
        self
    }

    /// `--admin-listen ADDR` (default `127.0.0.1:0`).
    pub fn admin_listen(mut self, addr: &str) -> ProxyBuilder {
        self.admin_listen = addr.into();
        self
    }

    /// Adds a `--capture-listen ADDR` (default when none: `127.0.0.1:0`, if the binary has the flag).
    pub fn capture_listen(mut self, addr: &str) -> ProxyBuilder {
        self.capture_listen.push(addr.into());
        self
    }

    /// Adds a `--dns-listen ADDR` (default when none: `127.0.0.1:0`, if the binary has the flag).
    pub fn dns_listen(mut self, addr: &str) -> ProxyBuilder {
        self.dns_listen.push(addr.into());
        self
    }

    /// Runs the proxy as `uid` (and the same gid) through `setpriv`, as in a Pod where
    /// tollgate-init exempts the proxy's UID; its temp dir is opened to that user.
    pub fn run_as(mut self, uid: u32) -> ProxyBuilder {
        self.run_as = Some(uid);
        self
    }

    /// `--labels-file PATH` (default: a path in the proxy's temp dir that does not exist yet).
    pub fn labels_file(mut self, path: impl AsRef<Path>) -> ProxyBuilder {
        self.labels_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// `--unlock-file PATH` (default: a path in the proxy's temp dir that does not exist yet).
    pub fn unlock_file(mut self, path: impl AsRef<Path>) -> ProxyBuilder {
        self.unlock_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// Any other argument, e.g. `.arg("--hello-timeout").arg("1s")`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> ProxyBuilder {
        self.extra.push(arg.into());
        self
    }

    /// Sets an environment variable for the proxy (e.g. `TOLLGATE_HELLO_TIMEOUT`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ProxyBuilder {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs the proxy inside namespace `ns` (`ip netns exec`); the admin port is reached there too.
    pub fn netns(mut self, ns: &str) -> ProxyBuilder {
        self.netns = Some(ns.into());
        self
    }

    /// Starts the proxy and waits until every listener has logged `listening`.
    pub async fn start(self) -> Result<Proxy> {
        let sni_count = self.listen.len().max(1);
        let mut proxy = self.spawn().await?;
        proxy.wait_listening(sni_count).await?;
        Ok(proxy)
    }

    /// Starts the proxy without waiting for its listeners (a test that holds one of its ports
    /// itself calls [`Proxy::wait_listening`] later).
    pub async fn spawn(self) -> Result<Proxy> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-proxy-")
            .tempdir()?;
        let labels_file = self
            .labels_file
            .unwrap_or_else(|| dir.path().join("labels"));
        let unlock_file = self
            .unlock_file
            .unwrap_or_else(|| dir.path().join("egress-unlocked"));
        let listen = if self.listen.is_empty() {
            vec!["127.0.0.1:0".to_string()]
        } else {
            self.listen
        };

        let bin = tollgate_bin();
        // `ip netns exec NS` and `setpriv ...` each exec the next word, so the pid stays the proxy's.
        let mut prefix: Vec<OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            prefix.extend(["ip", "netns", "exec", ns.as_str()].map(OsString::from));
        }
        if let Some(uid) = self.run_as {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
            let id = uid.to_string();
            prefix.extend(
                [
                    "setpriv",
                    "--reuid",
                    &id,
                    "--regid",
                    &id,
                    "--clear-groups",
                    "--",
                ]
                .map(OsString::from),
            );
        }
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        for l in &listen {
            cmd.arg("--listen").arg(l);
        }
        cmd.arg("--admin-listen").arg(&self.admin_listen);
        let capture = if self.capture_listen.is_empty() {
            vec!["127.0.0.1:0".to_string()]
        } else {
            self.capture_listen
        };
        for l in &capture {
            cmd.arg("--capture-listen").arg(l);
        }
        let dns = if self.dns_listen.is_empty() {
            vec!["127.0.0.1:0".to_string()]
        } else {
            self.dns_listen
        };
        for l in &dns {
            cmd.arg("--dns-listen").arg(l);
        }
        if let Some(p) = &self.policy {
            cmd.arg("--policy").arg(p);
        }
        cmd.arg("--labels-file").arg(&labels_file);
        cmd.arg("--unlock-file").arg(&unlock_file);
        cmd.arg("--log-format").arg("json");
        // The gateway (for policies that intercept) has its own fixed-port listener and state
        // directories: give each proxy its own, unless the test chose them.
        let chose = |flag: &str| self.extra.iter().any(|a| a.to_string_lossy() == flag);
        if !chose("--usage-listen") {
            cmd.arg("--usage-listen").arg("127.0.0.1:0");
        }
        if !chose("--certs-dir") {
            cmd.arg("--certs-dir").arg(dir.path().join("certs"));
        }
        if !chose("--probe-secret-file") {
            cmd.arg("--probe-secret-file")
                .arg(dir.path().join("probe-key"));
        }
        if !self
            .envs
            .iter()
            .any(|(k, _)| k.to_string_lossy() == "PROXY_DATA_DIR")
        {
            cmd.env("PROXY_DATA_DIR", dir.path().join("data"));
        }
        cmd.args(&self.extra);
        // The test runner's own environment must not configure the proxy behind our back.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TOLLGATE_") || k == "RUST_LOG" {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command_line = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {command_line}"))?;

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        spawn_reader(child.stderr.take().context("stderr piped")?, stderr.clone());
        spawn_reader(child.stdout.take().context("stdout piped")?, stdout.clone());

        let proxy = Proxy {
            child,
            exit: None,
            stderr,
            stdout,
            sni_addrs: Vec::new(),
            capture_addrs: Vec::new(),
            dns_addrs: Vec::new(),
            admin_addr: None,
            netns: self.netns,
            labels_file,
            unlock_file,
            command_line,
            _dir: dir,
        };
        Ok(proxy)
    }
}

fn spawn_reader(pipe: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            match line {
                Ok(l) => into.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
}

/// One JSON log line with tracing's nested `fields` / `span` objects merged into the top level,
/// so `line["sni"]` works whether or not the proxy flattens events.
pub fn parse_log_line(line: &str) -> Option<Value> {
    let mut v: Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object_mut()?;
    for nested in ["fields", "span"] {
        if let Some(Value::Object(inner)) = obj.remove(nested) {
            for (k, val) in inner {
                obj.entry(k).or_insert(val);
            }
        }
    }
    Some(v)
}

/// A running `tollgate`.
pub struct Proxy {
    child: Child,
    exit: Option<ExitStatus>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    sni_addrs: Vec<SocketAddr>,
    capture_addrs: Vec<SocketAddr>,
    dns_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    netns: Option<String>,
    labels_file: PathBuf,
    unlock_file: PathBuf,
    command_line: String,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// A builder with loopback defaults.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// Starts the proxy with `policy` and defaults otherwise.
    pub async fn start(policy: &Path) -> Result<Proxy> {
        Proxy::builder().policy(policy).start().await
    }

    /// Waits until `sni_count` SNI listeners and the admin listener have logged `listening`
    /// (within [`START_TIMEOUT`]), and learns their addresses.
    pub async fn wait_listening(&mut self, sni_count: usize) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut sni = Vec::new();
            let mut capture = Vec::new();
            let mut dns = Vec::new();
            let mut admin = None;
            for v in self.json_lines() {
                if v["message"] != "listening" {
                    continue;
                }
                let Some(addr) = v["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                else {
                    continue;
                };
                match v["listener"].as_str() {
                    Some("sni") => sni.push(addr),
                    Some("admin") => admin = Some(addr),
                    Some("capture") => capture.push(addr),
                    Some("dns") => dns.push(addr),
                    _ => {}
                }
            }
            if sni.len() >= sni_count && admin.is_some() {
                self.sni_addrs = sni;
                self.capture_addrs = capture;
                self.dns_addrs = dns;
                self.admin_addr = admin;
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "tollgate exited with {status} before listening\n{}",
                    self.describe()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "tollgate did not log {sni_count} sni + 1 admin `listening` lines within {START_TIMEOUT:?}\n{}",
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first SNI listener's address.
    pub fn sni_addr(&self) -> SocketAddr {
        self.sni_addrs[0]
    }

    /// All SNI listeners' addresses, in log order.
    pub fn sni_addrs(&self) -> &[SocketAddr] {
        &self.sni_addrs
    }

    /// The capture (original-destination) listeners' addresses, if the binary has them.
    pub fn capture_addrs(&self) -> &[SocketAddr] {
        &self.capture_addrs
    }

    /// The DNS listeners' addresses (UDP and TCP share each), if the binary has them.
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns_addrs
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
            .expect("admin_addr is set once start() returned")
    }

    /// The labels file the proxy watches (absent unless the test wrote it).
    pub fn labels_file(&self) -> &Path {
        &self.labels_file
    }

    /// The unlock sentinel the proxy watches (absent unless the test created it).
    pub fn unlock_file(&self) -> &Path {
        &self.unlock_file
    }

    /// The key file `tollgate probe` checks this proxy's `/readyz` answers with.
    pub fn probe_key_file(&self) -> PathBuf {
        self._dir.path().join("probe-key")
    }

    /// Runs `tollgate probe` against `admin` with this proxy's key: (exit code, stderr).
    pub fn probe(&self, admin: SocketAddr) -> Result<(i32, String)> {
        let out = Command::new(tollgate_bin())
            .arg("probe")
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--probe-secret-file")
            .arg(self.probe_key_file())
            .env_remove("TOLLGATE_PROBE_SECRET_FILE")
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Every stderr line that parses as JSON, normalised by [`parse_log_line`].
    pub fn json_lines(&self) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| parse_log_line(l))
            .collect()
    }

    /// The per-connection log lines (`message == "connection"`), in order.
    pub fn connection_logs(&self) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|v| v["message"] == "connection")
            .collect()
    }

    /// Waits for a log line matching `pred` and returns it.
    pub async fn wait_for_log(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.json_lines().into_iter().find(|v| pred(v)) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no log line matching {what} within {timeout:?}\n{}",
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` connection lines were logged; returns them all.
    pub async fn wait_for_connection_logs(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.connection_logs();
            if logs.len() >= n {
                return Ok(logs);
            }
            if Instant::now() >= deadline {
                bail!(
                    "expected {n} connection log lines within {timeout:?}, got {}\n{}",
                    logs.len(),
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a connection line whose `sni` is `sni` (exactly as logged) and returns it.
    pub async fn wait_for_connection(&self, sni: &str, timeout: Duration) -> Result<Value> {
        self.wait_for_log(timeout, &format!("connection sni={sni}"), |v| {
            v["message"] == "connection" && v["sni"] == sni
        })
        .await
    }

    /// Waits for the connection line whose `peer` is `peer` (the client's local address): the
    /// unambiguous way to find one connection's line among concurrent or late ones.
    pub async fn wait_for_peer(&self, peer: SocketAddr, timeout: Duration) -> Result<Value> {
        let want = peer.to_string();
        self.wait_for_log(timeout, &format!("connection peer={want}"), |v| {
            v["message"] == "connection" && v["peer"] == want.as_str()
        })
        .await
    }

    /// `GET path` on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        self.admin_request("GET", path).await
    }

    /// `method path` (no body) on the admin listener: (status, body).
    pub async fn admin_request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let addr = self.admin_addr();
        let stream = match &self.netns {
            Some(ns) => {
                let s = crate::netns::connect_tcp_in(ns, addr)?;
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)?
            }
            None => tokio::net::TcpStream::connect(addr).await?,
        };
        crate::scrape::http_request(stream, addr, method, path)
            .await
            .context("admin port")
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        crate::eventually(timeout, "/readyz 200", || async {
            matches!(self.admin_get("/readyz").await, Ok((200, _))).then_some(())
        })
        .await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = self.admin_get("/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body)
    }

    /// The value of `name{labels}` (summed over series whose labels include `labels`).
    pub async fn metric_value(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
        Ok(metric_value(&self.metrics().await?, name, labels))
    }

    /// The value of `name{labels}`; an error when no series matches, so that a check for 0
    /// cannot pass on a series that was renamed or never exported.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let text = self.metrics().await?;
        metric_value(&text, name, labels).with_context(|| {
            format!(
                "no series {name}{labels:?} in /metrics:\n{}",
                related_series(&text, name)
            )
        })
    }

    /// Like [`Proxy::metric`], with no matching series read as 0: for labelled counters, whose
    /// series appear only once counted. The family itself must be declared (`# TYPE`).
    pub async fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let text = self.metrics().await?;
        if !crate::scrape::family_declared(&text, name) {
            bail!("/metrics declares no family {name}");
        }
        Ok(metric_value(&text, name, labels).unwrap_or(0.0))
    }

    /// Waits until `name{labels}` exists and satisfies `pred`; returns the value.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric_value(name, labels).await?;
            if let Some(v) = v.filter(|v| pred(*v)) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                let text = self.metrics().await.unwrap_or_default();
                bail!(
                    "metric {name}{labels:?} = {v:?} never satisfied the condition within {timeout:?}; series:\n{}\n{}",
                    related_series(&text, name),
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGTERM)
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)?;
        Ok(())
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// True while the process is still running.
    pub fn try_wait_alive(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "tollgate still running {timeout:?} later\n{}",
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The command line and the whole captured output, for failure messages.
    pub fn describe(&self) -> String {
        let stderr = self.stderr.lock().unwrap();
        let stdout = self.stdout.lock().unwrap();
        let mut s = format!(
            "--- tollgate: {}\n--- stderr ({} lines):\n",
            self.command_line,
            stderr.len()
        );
        for l in stderr.iter() {
            s.push_str(l);
            s.push('\n');
        }
        if !stdout.is_empty() {
            s.push_str(&format!("--- stdout ({} lines):\n", stdout.len()));
            for l in stdout.iter() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s.push_str("--- end of tollgate output");
        s
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() || std::env::var_os("TOLLGATE_TEST_SHOW_LOG").is_some() {
            // Give the reader threads a moment to drain the pipes.
            std::thread::sleep(Duration::from_millis(50));
            eprintln!("{}", self.describe());
        }
    }
}

/// The lines of `text` about metric `name`, for error messages.
fn related_series(text: &str, name: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(name)).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_flattened() {
        let v = parse_log_line(
            r#"{"level":"INFO","fields":{"message":"connection","sni":"a.test"},"target":"t"}"#,
        )
        .unwrap();
        assert_eq!(v["message"], "connection");
        assert_eq!(v["sni"], "a.test");
        assert!(parse_log_line("not json").is_none());
    }
}
