//! What the load generator dials: the origin itself, or a proxy in front of it. Proxies run as
//! child processes (the real release binaries), are told where the origin is through their
//! config files, and are killed when their [`Target`] is dropped.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

use crate::pki::SNI;

/// How long a proxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// The kinds of target, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The origin, no proxy.
    Direct,
    /// tollgate as shipped: one info log line per connection.
    Tollgate,
    /// tollgate with the per-connection line filtered out (`tollgate::connection=warn`).
    TollgateNoLog,
    /// tollgate with `--worker-threads 1`: one thread serves every connection.
    Tollgate1T,
    /// HAProxy in `mode tcp`, routing on `req.ssl_sni`, `nbthread` from the settings (2).
    Haproxy,
    /// The same with `nbthread 1`: HAProxy's best for new connections on two cores, while two
    /// threads are its best for small requests, so both run and ratios take the better one.
    Haproxy1T,
    /// `haproxy-1t` that also writes one line per connection (`option tcplog` to stdout, which
    /// goes to a file as tollgate's stderr does): HAProxy doing tollgate's logging duty too.
    Haproxy1TLog,
    /// Another tollgate build (`--candidate-bin`), as shipped: to A/B an optimisation.
    Candidate,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 8] = [
        Kind::Direct,
        Kind::Tollgate,
        Kind::TollgateNoLog,
        Kind::Tollgate1T,
        Kind::Haproxy,
        Kind::Haproxy1T,
        Kind::Haproxy1TLog,
        Kind::Candidate,
    ];

    /// Name for flags, progress lines and tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Tollgate => "tollgate",
            Kind::TollgateNoLog => "tollgate-nolog",
            Kind::Tollgate1T => "tollgate-1t",
            Kind::Haproxy => "haproxy",
            Kind::Haproxy1T => "haproxy-1t",
            Kind::Haproxy1TLog => "haproxy-1t-log",
            Kind::Candidate => "candidate",
        }
    }

    /// Whether this kind is an HAProxy configuration.
    pub fn is_haproxy(self) -> bool {
        matches!(self, Kind::Haproxy | Kind::Haproxy1T | Kind::Haproxy1TLog)
    }

    /// Parses [`Kind::name`].
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A target ready to be dialled.
pub struct Target {
    /// Which kind it is.
    pub kind: Kind,
    /// Where clients connect.
    pub addr: SocketAddr,
    process: Option<Process>,
}

impl Target {
    /// The origin itself.
    pub fn direct(origin: SocketAddr) -> Target {
        Target {
            kind: Kind::Direct,
            addr: origin,
            process: None,
        }
    }

    /// The proxy's process id, for CPU accounting.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the proxy, so a proxy that is not being measured
    /// cannot take CPU from the one that is, whatever it does when idle. No-op for direct.
    pub fn pause(&self, paused: bool) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let Some(pid) = self.pid() else { return Ok(()) };
        let signal = if paused {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let pid = Pid::from_raw(i32::try_from(pid).context("pid fits in i32")?);
        kill(pid, signal).with_context(|| format!("{signal} to {}", self.kind.name()))
    }

    /// The proxy's stderr so far (tollgate's JSON log).
    pub fn log_path(&self) -> Option<&Path> {
        self.process.as_ref().map(|p| p.log.as_path())
    }

    /// Starts `tollgate` (`bin`) routing `bench.test` to `origin`, as `kind` (one of the tollgate
    /// kinds; [`Kind::TollgateNoLog`] filters out the per-connection log line).
    pub async fn tollgate(bin: &Path, origin: SocketAddr, kind: Kind) -> Result<Target> {
        Self::tollgate_with_args(bin, origin, kind, &[]).await
    }

    /// [`Target::tollgate`] with `extra` flags after the benchmark's own.
    pub async fn tollgate_with_args(
        bin: &Path,
        origin: SocketAddr,
        kind: Kind,
        extra: &[String],
    ) -> Result<Target> {
        Self::tollgate_with_options(bin, origin, kind, extra, false).await
    }

    /// [`Target::tollgate_with_args`], and with `evidence` the hash-chained decision log on
    /// (`--evidence-dir` in the target's directory, uncapped for the run), as in a Pod whose
    /// gateway runs, when `bin` has the flag.
    pub async fn tollgate_with_options(
        bin: &Path,
        origin: SocketAddr,
        kind: Kind,
        extra: &[String],
        evidence: bool,
    ) -> Result<Target> {
        let log_connections = kind != Kind::TollgateNoLog;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-")
            .tempdir()?;
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, tollgate_policy(origin))?;
        // The log gets a directory of its own: tollgate watches the policy's directory (and may
        // watch the phase files'), and a log written there would wake the watcher on every line.
        std::fs::create_dir(dir.path().join("log"))?;
        let log = dir.path().join("log").join("tollgate.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--policy")
        .arg(&policy)
        // Paths that do not exist: the phase is the policy's (agent), whatever this machine has
        // in /etc/podinfo or /tmp.
        .arg("--labels-file")
        .arg(dir.path().join("labels"))
        .arg("--unlock-file")
        .arg(dir.path().join("egress-unlocked"));
        // Newer builds have a capture listener on a fixed default port: keep it ephemeral too.
        if help_mentions(bin, "--capture-listen") {
            cmd.args(["--capture-listen", "127.0.0.1:0"]);
        }
        if help_mentions(bin, "--dns-listen") {
            cmd.args(["--dns-listen", "127.0.0.1:0"]);
        }
        if evidence && help_mentions(bin, "--evidence-dir") {
            cmd.arg("--evidence-dir")
                .arg(dir.path().join("evidence"))
                .args(["--evidence-max-bytes", "4GiB"]);
        }
        cmd.args(extra);
        // The caller's environment must not reconfigure the proxy behind the benchmark's back.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TOLLGATE_") || key == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        // The listening lines are info too, so filter by target rather than level.
        cmd.env(
            "RUST_LOG",
            if log_connections {
                "info"
            } else {
                "info,tollgate::connection=warn"
            },
        );
        let mut process = Process::spawn(cmd, dir, log)?;
        let addr = process.wait_for_tollgate().await?;
        Ok(Target {
            kind,
            addr,
            process: Some(process),
        })
    }

    /// Starts HAProxy (`bin`) routing `bench.test` to `origin`, as `kind` (one of the HAProxy
    /// kinds; [`Kind::Haproxy1T`] overrides `nbthread` to 1).
    pub async fn haproxy(
        bin: &Path,
        origin: SocketAddr,
        mut settings: HaproxySettings,
        kind: Kind,
    ) -> Result<Target> {
        if matches!(kind, Kind::Haproxy1T | Kind::Haproxy1TLog) {
            settings.nbthread = 1;
        }
        settings.log = kind == Kind::Haproxy1TLog;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-haproxy-")
            .tempdir()?;
        // HAProxy cannot report an ephemeral port, so take a free one and release it. Another
        // process could grab it in between; the start then fails loudly rather than measuring
        // the wrong thing.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(addr, origin, settings))?;
        let log = dir.path().join("haproxy.log");
        let mut cmd = Command::new(bin);
        // -db: foreground, no daemon; the process we spawn is the one we kill.
        cmd.arg("-db").arg("-f").arg(&config);
        let mut process = Process::spawn(cmd, dir, log)?;
        process.wait_for_port(addr).await?;
        Ok(Target {
            kind,
            addr,
            process: Some(process),
        })
    }
}

/// The policy that tunnels `bench.test` to the origin.
pub fn tollgate_policy(origin: SocketAddr) -> String {
    format!(
        "version = 1\n\
         [tunnel]\n\
         allow = [\"{SNI}\"]\n\
         [hosts.\"{SNI}\"]\n\
         pin = [\"{ip}\"]\n\
         port = {port}\n\
         allow_ranges = [\"127.0.0.0/8\"]\n",
        ip = origin.ip(),
        port = origin.port(),
    )
}

/// HAProxy's tuning knobs the benchmark exposes.
#[derive(Clone, Copy, Debug)]
pub struct HaproxySettings {
    /// `nbthread`.
    pub nbthread: u32,
    /// `option splice-auto`: kernel splicing when HAProxy thinks it pays.
    pub splice: bool,
    /// `maxconn` (4,096; the idle-tunnel benchmark raises it to hold N tunnels).
    pub maxconn: u32,
    /// One `option tcplog` line per connection to stdout (set for [`Kind::Haproxy1TLog`]).
    pub log: bool,
}

/// The HAProxy configuration: an L4 SNI router equivalent to tollgate's tunnel for one host.
pub fn haproxy_config(listen: SocketAddr, origin: SocketAddr, s: HaproxySettings) -> String {
    let splice = if s.splice {
        "    option splice-auto\n"
    } else {
        ""
    };
    let (log_global, log_defaults) = if s.log {
        (
            "    log stdout format raw local0 info\n",
            "    log global\n    option tcplog\n",
        )
    } else {
        ("", "")
    };
    format!(
        "global\n\
        \x20   nbthread {nbthread}\n\
        \x20   maxconn {maxconn}\n\
        {log_global}\
        defaults\n\
        \x20   mode tcp\n\
        {log_defaults}\
        \x20   timeout connect 5s\n\
        \x20   timeout client 60s\n\
        \x20   timeout server 60s\n\
        {splice}\
        frontend sni\n\
        \x20   bind {listen}\n\
        \x20   tcp-request inspect-delay 5s\n\
        \x20   tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
        \x20   use_backend origin if {{ req.ssl_sni -i {SNI} }}\n\
        backend origin\n\
        \x20   server origin {origin}\n",
        nbthread = s.nbthread,
        maxconn = s.maxconn,
    )
}

/// A proxy child process with stderr and stdout in a log file; killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn spawn(mut cmd: Command, dir: TempDir, log: PathBuf) -> Result<Process> {
        // A file, not a pipe: the proxy pays for its writes as it would to a container log pipe,
        // and no reader in this process competes for the two cores.
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Process {
            child,
            log,
            _dir: dir,
        })
    }

    fn exited(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("exited at start ({status}):\n{log}");
        }
        Ok(())
    }

    /// Waits for tollgate's `listening` line for the SNI listener.
    async fn wait_for_tollgate(&mut self) -> Result<SocketAddr> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(addr) = log.lines().find_map(sni_listener) {
                return Ok(addr);
            }
            self.exited().context("tollgate")?;
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "tollgate logged no `listening` line in {START_TIMEOUT:?}:\n{log}"
                ));
            }
            sleep(POLL).await;
        }
    }

    /// Waits until `addr` accepts connections.
    async fn wait_for_port(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            self.exited().context("haproxy")?;
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(anyhow!(
                    "haproxy did not listen on {addr} in {START_TIMEOUT:?}:\n{log}"
                ));
            }
            sleep(POLL).await;
        }
    }
}

/// The address of a `{"message":"listening","listener":"sni","addr":...}` line.
fn sni_listener(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    // Flattened events carry the fields at the top level; tolerate the nested form too.
    let fields = v.get("fields").unwrap_or(&v);
    let message = fields.get("message").or_else(|| v.get("message"))?;
    (message == "listening" && fields.get("listener")? == "sni")
        .then(|| fields.get("addr")?.as_str()?.parse().ok())?
}

/// Counts the per-connection lines in a tollgate log, and the log's size in bytes.
pub fn connection_lines(log: &Path) -> Option<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let file = File::open(log).ok()?;
    let size = file.metadata().ok()?.len();
    let count = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("\"message\":\"connection\""))
        .count();
    Some((count as u64, size))
}

/// Whether `<bin> --help` mentions `flag`, for flags that not every build has.
fn help_mentions(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// First line of `<bin> <arg>`, e.g. `tollgate --version` or `haproxy -v`.
pub fn version(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `name` on PATH, or in the sbin directories a non-root PATH may lack.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_gives_the_sni_address() {
        let admin =
            r#"{"level":"INFO","message":"listening","listener":"admin","addr":"127.0.0.1:1"}"#;
        let sni = r#"{"level":"INFO","message":"listening","listener":"sni","addr":"127.0.0.1:2"}"#;
        assert_eq!(sni_listener(admin), None);
        assert_eq!(sni_listener(sni), "127.0.0.1:2".parse().ok());
        assert_eq!(sni_listener("not json"), None);
    }
}
