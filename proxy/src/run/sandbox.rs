//! The sandbox: a network namespace that holds CMD and tollgate's listeners, and nothing else.
//!
//! One dedicated thread leaves the process's namespace (`unshare(CLONE_NEWNET)` moves only the
//! calling thread), brings `lo` up with default routes through it (so a connect to any address
//! reaches the netfilter hooks instead of failing with ENETUNREACH), installs the rules
//! tollgate-init plans for a Pod (its library: the same plan, the same restore input, then the
//! same drift check), and binds the listeners; a socket stays in the namespace it was made in, so
//! the runtime in the caller's namespace serves them. The thread then starts CMD (a child inherits
//! the namespaces of the thread that forks it) and waits for it: CMD's parent-death signal fires
//! when this thread ends, so the thread lives exactly as long as CMD.
//!
//! Inside, tollgate originates no traffic, so nothing is exempt by owner: every TCP connection
//! is redirected to a listener, DNS to the DNS listener, everything else is rejected.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tollgate_init::backend::{self, Tools};
use tollgate_init::config::{Config, SandboxPorts};
use tollgate_init::restore::{drift, render_install};
use tollgate_init::rules::plan;

use super::Ended;
use super::child::EXEC_SUBCOMMAND;

/// The ports tollgate listens on inside the sandbox.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ports {
    pub sni: u16,
    pub capture: u16,
    pub dns: u16,
    pub admin: u16,
    pub usage: Option<u16>,
}

/// The listeners, bound inside the sandbox, registered with the caller's runtime.
pub(crate) struct Listeners {
    pub sni: Vec<TcpListener>,
    pub capture: Vec<TcpListener>,
    pub dns: Vec<(UdpSocket, TcpListener)>,
    pub admin: TcpListener,
    pub usage: Option<TcpListener>,
}

/// What the sandbox thread runs.
#[derive(Debug)]
pub(crate) struct ChildSpec {
    /// CMD and its arguments.
    pub argv: Vec<OsString>,
    /// Variables added to the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// The UID/GID to run as (root mode); `None`: a nested user namespace (rootless).
    pub uid: Option<u32>,
}

/// Why the sandbox could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    #[error(
        "cannot create a network namespace: {0} (tollgate run needs root, or unprivileged user \
         namespaces: sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; \
         on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0)"
    )]
    Unshare(nix::Error),
    #[error("cannot set up the sandbox's loopback: {0}")]
    Loopback(String),
    #[error("cannot install the sandbox's rules: {0}")]
    Rules(String),
    #[error("cannot listen on {addr} in the sandbox: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the sandbox thread ended early")]
    Thread,
}

/// Starts the one command, once.
pub(crate) struct Spawner {
    requests: std::sync::mpsc::Sender<Request>,
}

struct Request {
    child: ChildSpec,
    started: oneshot::Sender<std::io::Result<u32>>,
    ended: oneshot::Sender<Ended>,
}

impl Spawner {
    /// Starts CMD in the sandbox: its pid, and a receiver for how it ended.
    pub async fn spawn(self, child: ChildSpec) -> anyhow::Result<(u32, oneshot::Receiver<Ended>)> {
        let (started, started_rx) = oneshot::channel();
        let (ended, ended_rx) = oneshot::channel();
        self.requests
            .send(Request {
                child,
                started,
                ended,
            })
            .map_err(|_| anyhow::anyhow!("the sandbox thread is gone"))?;
        let pid = started_rx
            .await
            .map_err(|_| anyhow::anyhow!("the sandbox thread is gone"))??;
        Ok((pid, ended_rx))
    }
}

/// Builds the sandbox on its own thread; returns its listeners and the way to start CMD in it.
pub(crate) fn create(
    runtime: tokio::runtime::Handle,
    ports: Ports,
) -> Result<(Listeners, Spawner), SandboxError> {
    let (setup_tx, setup_rx) = std::sync::mpsc::channel();
    let (requests, requests_rx) = std::sync::mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("sandbox".into())
        .spawn(move || {
            let setup = setup(&runtime, ports);
            let ok = setup.is_ok();
            if setup_tx.send(setup).is_err() || !ok {
                return;
            }
            // Dropped without a request (start-up failed elsewhere): nothing to run.
            if let Ok(request) = requests_rx.recv() {
                run_child(request);
            }
        })
        .map_err(|_| SandboxError::Thread)?;
    let listeners = setup_rx.recv().map_err(|_| SandboxError::Thread)??;
    Ok((listeners, Spawner { requests }))
}

fn setup(runtime: &tokio::runtime::Handle, ports: Ports) -> Result<Listeners, SandboxError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(SandboxError::Unshare)?;
    // IPv6 disabled in new namespaces (net.ipv6.conf.default.disable_ipv6=1) means no IPv6
    // traffic at all: then there is nothing to capture or fence (this thread's /proc/sys/net is
    // already the sandbox's).
    let ipv6 = tollgate_init::host::kernel_has_ipv6()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
            .is_ok_and(|v| v.trim() == "0");
    loopback(ipv6)?;
    install_rules(ports, ipv6)?;
    let _entered = runtime.enter();
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let families: Vec<IpAddr> = if ipv6 { vec![v4, v6] } else { vec![v4] };
    let tcp = |port: u16| -> Result<Vec<TcpListener>, SandboxError> {
        families
            .iter()
            .map(|ip| {
                let addr = SocketAddr::new(*ip, port);
                crate::bind::bind(addr).map_err(|error| SandboxError::Bind { addr, error })
            })
            .collect()
    };
    let dns = families
        .iter()
        .map(|ip| {
            let addr = SocketAddr::new(*ip, ports.dns);
            crate::dns::listener::bind(addr).map_err(|error| SandboxError::Bind { addr, error })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let one = |port: u16| {
        let addr = SocketAddr::new(v4, port);
        crate::bind::bind(addr).map_err(|error| SandboxError::Bind { addr, error })
    };
    Ok(Listeners {
        sni: tcp(ports.sni)?,
        capture: tcp(ports.capture)?,
        dns,
        admin: one(ports.admin)?,
        usage: ports.usage.map(one).transpose()?,
    })
}

/// The sandbox's own address, on `lo`: RFC 7600's "IPv4 dummy address", reserved for exactly
/// this (a host with no IPv4 address of its own). Without one, connections to other addresses
/// would leave from 0.0.0.0 or 127.0.0.1, and the answers of redirected flows would not return.
const SOURCE_V4: &str = "192.0.0.8";
/// Its IPv6 twin: a fixed address in a unique local prefix.
const SOURCE_V6: &str = "fd7f:7467:7275::1";

/// `lo` up with the sandbox's address, and default routes through it: a connect to any address
/// then reaches the nat hook (and is redirected or rejected) instead of failing for want of a
/// route. Packets that escaped the rules would loop back and be dropped: there is no other
/// interface.
fn loopback(ipv6: bool) -> Result<(), SandboxError> {
    let v4_addr = format!("{SOURCE_V4}/32");
    let v6_addr = format!("{SOURCE_V6}/128");
    let mut steps: Vec<Vec<&str>> = vec![
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &v4_addr, "dev", "lo"],
        vec!["route", "add", "default", "dev", "lo", "src", SOURCE_V4],
    ];
    if ipv6 {
        steps.push(vec!["-6", "addr", "add", &v6_addr, "dev", "lo", "nodad"]);
        steps.push(vec![
            "-6", "route", "add", "default", "dev", "lo", "src", SOURCE_V6,
        ]);
    }
    for args in steps {
        let out = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                SandboxError::Loopback(format!("cannot run `ip` (install iproute2): {e}"))
            })?;
        if !out.status.success() {
            return Err(SandboxError::Loopback(format!(
                "`ip {}`: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// tollgate-init's plan for this sandbox, applied per family and then read back: the run does
/// not start unless the kernel holds exactly the plan.
fn install_rules(ports: Ports, ipv6: bool) -> Result<(), SandboxError> {
    let cfg = Config::sandbox(
        SandboxPorts {
            sni: ports.sni,
            capture: ports.capture,
            dns: ports.dns,
        },
        ipv6,
    );
    let (backend, why) =
        backend::choose(cfg.backend, cfg.ipv6).map_err(|e| SandboxError::Rules(e.to_string()))?;
    for family in cfg.families() {
        let tools = Tools::find(backend, family).map_err(|e| SandboxError::Rules(e.to_string()))?;
        let wanted = plan(&cfg, family);
        tools
            .restore(&render_install(&wanted, None))
            .map_err(|e| SandboxError::Rules(format!("{family}: {e}")))?;
        let live = tools
            .save()
            .map_err(|e| SandboxError::Rules(e.to_string()))?;
        let problems = drift(&wanted, &live);
        if !problems.is_empty() {
            return Err(SandboxError::Rules(format!(
                "{family}: the installed rules differ from the plan: {}",
                problems.join("; ")
            )));
        }
        tracing::info!(%family, backend = %backend, why, "sandbox rules installed");
    }
    Ok(())
}

/// Starts CMD through `tollgate run-exec` (see [`super::child`]) in its own process group, as
/// the unprivileged UID in root mode, and waits for it on this thread.
fn run_child(request: Request) {
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    let Request {
        child,
        started,
        ended,
    } = request;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.arg(EXEC_SUBCOMMAND)
        .arg("--parent")
        .arg(std::process::id().to_string());
    if child.uid.is_none() {
        cmd.arg("--nested-userns");
    }
    cmd.arg("--").args(&child.argv);
    cmd.envs(child.env).process_group(0);
    if let Some(uid) = child.uid {
        // std drops the supplementary groups too (setgroups(0)) when root changes UID.
        cmd.uid(uid).gid(uid);
    }
    let mut process = match cmd.spawn() {
        Ok(p) => p,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(process.id()));
    let status = match process.wait() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot wait for the command");
            return;
        }
    };
    let result = match (status.code(), status.signal()) {
        (Some(code), _) => Ended::Exited(code),
        (None, Some(sig)) => Ended::Signaled(sig),
        (None, None) => Ended::Exited(1),
    };
    let _ = ended.send(result);
}
