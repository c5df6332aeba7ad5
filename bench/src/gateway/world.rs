//! What the benchmark dials: the fake OpenRouter (in this process) and one `tollgate` child
//! process per log level, each aimed at the fake by the test-support gateway policy.
//!
//! The proxy is spawned here rather than through `tollgate_tests::proxy::ProxyBuilder`: the
//! benchmark must choose the binary (the builder finds it only through `$TOLLGATE_BIN` or next
//! to a test executable), pin `RUST_LOG`, and send the log to a file the way a container runtime
//! would, instead of a pipe drained by a thread of the measuring process.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_tests::fake_openrouter::ChatScript;
use tollgate_tests::gateway::{Gateway, GatewaySpec, REFERENCE_ENV};
use tollgate_tests::proxy::{parse_http_response, parse_log_line};

use super::Target;

/// How long tollgate may take to listen and report ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the start-up is polled.
const POLL: Duration = Duration::from_millis(20);
/// The gap between the first and the last SSE event, so that the first event arrives alone and
/// time-to-first-event cannot be mistaken for time-to-whole-stream.
pub const SSE_EVENT_GAP: Duration = Duration::from_millis(1);

/// tollgate's log filter for one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// `warn`, plus `tollgate::server=info` for the `listening` lines that give the ports
    /// (that module logs nothing per request).
    Warn,
    /// `info`: a `connection` line per connection and a `request` line per request.
    Info,
}

impl LogLevel {
    /// The `RUST_LOG` value.
    pub fn rust_log(self) -> &'static str {
        match self {
            LogLevel::Warn => "warn,tollgate::server=info",
            LogLevel::Info => "info",
        }
    }
}

/// One round's world: the fake upstream and the proxies.
pub struct World {
    /// The fake OpenRouter and the test-support policy that aims `openrouter.ai` at it.
    pub gateway: Gateway,
    /// One tollgate per proxy target.
    pub proxies: Vec<Tollgate>,
}

impl World {
    /// Starts the fake and a tollgate for each proxy in `targets`: `bin`, or `candidate` for
    /// [`Target::Candidate`].
    pub async fn start(bin: &Path, candidate: Option<&Path>, targets: &[Target]) -> Result<World> {
        let gateway = Gateway::new()
            .await
            .context("starting the fake OpenRouter")?;
        // One content event, a gap, then the final event with usage (see SSE_EVENT_GAP).
        gateway.fake.set_chat(
            ChatScript::default()
                .content(&["Hi! How can I help you today?"])
                .event_delay(SSE_EVENT_GAP),
        );
        let mut proxies = Vec::new();
        for &target in targets {
            let Some(level) = target.log_level() else {
                continue;
            };
            let bin = match target {
                Target::Candidate => candidate.context("no candidate binary given")?,
                _ => bin,
            };
            let proxy = Tollgate::start(bin, &gateway, target, level)
                .await
                .with_context(|| format!("starting {} ({})", bin.display(), level.rust_log()))?;
            proxies.push(proxy);
        }
        Ok(World { gateway, proxies })
    }

    /// The proxy `target` dials; None for direct.
    pub fn proxy(&self, target: Target) -> Option<&Tollgate> {
        self.proxies.iter().find(|p| p.target == target)
    }

    /// Resumes the proxy `target` needs and pauses (SIGSTOP) every other one, so an idle proxy's
    /// background work (fsync, usage file) cannot land in another target's sample.
    pub fn only_run(&self, target: Target) -> Result<()> {
        for p in &self.proxies {
            p.pause(p.target != target)?;
        }
        Ok(())
    }
}

/// A running `tollgate` with the gateway policy; killed on drop.
pub struct Tollgate {
    /// The target it is.
    pub target: Target,
    /// The SNI listener (where agents' TLS arrives).
    pub sni: SocketAddr,
    /// The per-Pod CA certificate it wrote (`ca.crt`), PEM.
    pub ca_pem: Vec<u8>,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tollgate {
    /// Starts `bin` with the flags of a Pod's sidecar (every listener on an ephemeral loopback
    /// port) and waits until it is ready and has written its CA.
    pub async fn start(
        bin: &Path,
        gateway: &Gateway,
        target: Target,
        level: LogLevel,
    ) -> Result<Tollgate> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-gateway-")
            .tempdir()?;
        // Policy, log, certificates and spend data each in a directory of their own: tollgate
        // watches the policy's directory, and must not be woken by its own writes.
        for sub in ["policy", "log", "certs", "data"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let (certs, data) = (dir.path().join("certs"), dir.path().join("data"));
        let policy = dir.path().join("policy").join("policy.toml");
        std::fs::write(&policy, policy_toml(gateway, &certs, &data))?;
        let log = dir.path().join("log").join("tollgate.log");

        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args([
                "--capture-listen",
                "127.0.0.1:0",
                "--usage-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
            ])
            .arg("--certs-dir")
            .arg(&certs)
            .args(["--log-format", "json"])
            .arg("--policy")
            .arg(&policy)
            // Paths that do not exist: the phase is the policy's (agent), whatever this machine
            // has in /etc/podinfo or /tmp.
            .arg("--labels-file")
            .arg(dir.path().join("labels"))
            .arg("--unlock-file")
            .arg(dir.path().join("egress-unlocked"));
        // The caller's environment must not reconfigure the proxy behind the benchmark's back.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("TOLLGATE_") || k == "RUST_LOG" || REFERENCE_ENV.contains(&&*k) {
                cmd.env_remove(&key);
            }
        }
        cmd.env("PROXY_DATA_DIR", &data)
            .env("RUST_LOG", level.rust_log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?);
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let mut proxy = Tollgate {
            target,
            sni: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_pem: Vec::new(),
            child,
            log,
            _dir: dir,
        };
        let admin = proxy.wait_listening().await?;
        proxy.wait_ready(admin, &certs.join("ca.crt")).await?;
        proxy.ca_pem = std::fs::read(certs.join("ca.crt"))?;
        Ok(proxy)
    }

    /// The process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&self, paused: bool) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        let signal = if paused {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).context("pid fits i32")?);
        kill(pid, signal).with_context(|| format!("{signal} to tollgate"))
    }

    /// Bytes of log written so far.
    pub fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The log so far, for error messages.
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads the SNI and admin addresses from the `listening` lines; returns the admin one.
    async fn wait_listening(&mut self) -> Result<SocketAddr> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (mut sni, mut admin) = (None, None);
            for v in self.log_text().lines().filter_map(parse_log_line) {
                if v["message"] != "listening" {
                    continue;
                }
                let addr = v["addr"].as_str().and_then(|a| a.parse().ok());
                match v["listener"].as_str() {
                    Some("sni") => sni = sni.or(addr),
                    Some("admin") => admin = admin.or(addr),
                    _ => {}
                }
            }
            if let (Some(sni), Some(admin)) = (sni, admin) {
                self.sni = sni;
                return Ok(admin);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "no sni + admin `listening` lines in {START_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for `/readyz` 200 and the CA file.
    async fn wait_ready(&mut self, admin: SocketAddr, ca: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if matches!(get(admin, "/readyz").await, Ok((200, _))) && ca.is_file() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("not ready in {START_TIMEOUT:?}:\n{}", self.log_text());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("exited at start ({status}):\n{}", self.log_text()),
            None => Ok(()),
        }
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test-support gateway policy (openrouter.ai pinned to the fake, its CA trusted, models
/// priced in the policy, no price fetch), with a budget and limits no benchmark run reaches,
/// and this proxy's own certificate and spend directories.
fn policy_toml(gateway: &Gateway, certs: &Path, data: &Path) -> String {
    let spec: GatewaySpec = gateway
        .spec()
        .budget("100000")
        .set("intercept.budget", "data_dir", data.display().to_string())
        .set("intercept.tls", "output_dir", certs.display().to_string())
        .set("intercept.limits", "requests_per_second", 1_000_000)
        .set("intercept.limits", "burst", 1_000_000)
        .set("intercept.limits", "max_concurrent", 4096);
    spec.to_toml()
}

/// `GET path` over plain HTTP/1.1 (the admin port): (status, body).
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(req.as_bytes()).await?;
        stream.read_to_end(&mut raw).await
    })
    .await
    .context("admin port timed out")??;
    parse_http_response(&raw)
}
