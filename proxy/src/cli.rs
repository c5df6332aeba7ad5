//! The command line (the binary's edge): flags and environment, logging, binding, signals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate_policy::{DEFAULT_POLICY_TOML, Policy};

use crate::accept::Limits;
use crate::phase;
use crate::server::{LoadedPolicy, Server, Settings};

/// Exit code for a bad configuration (BSD sysexits EX_USAGE), as linkerd2-proxy uses.
pub const EXIT_CONFIG: u8 = 64;

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TOLLGATE_COMMIT"),
    ")"
);

/// tollgate: transparent egress proxy and SNI router for Pods that run untrusted AI-agent code.
///
/// Reads the TLS ClientHello of each redirected connection and, by SNI, phase and policy,
/// intercepts it (LLM API hosts), tunnels it to the SNI host, or rejects it (fail closed).
/// With no --policy it runs an embedded default policy: agent phase, intercept openrouter.ai,
/// nothing else allowed.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version = LONG_VERSION, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a policy file and print a short summary; exits non-zero with the error.
    Check {
        /// The policy TOML file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Policy TOML file (watched and hot-reloaded). Default: the embedded policy.
    #[arg(long, env = "TOLLGATE_POLICY")]
    policy: Option<PathBuf>,
    /// SNI listener address; repeat (or comma-separate) for several.
    #[arg(long, env = "TOLLGATE_LISTEN", value_delimiter = ',', default_values = ["0.0.0.0:15443", "[::]:15443"])]
    listen: Vec<SocketAddr>,
    /// Original-destination (capture) listener for every other redirected TCP port; repeatable.
    #[arg(long, env = "TOLLGATE_CAPTURE_LISTEN", value_delimiter = ',', default_values = ["0.0.0.0:15001", "[::]:15001"])]
    capture_listen: Vec<SocketAddr>,
    /// DNS listener (UDP and TCP) that tollgate-init redirects the Pod's port 53 to; repeatable.
    #[arg(long, env = "TOLLGATE_DNS_LISTEN", value_delimiter = ',', default_values = ["0.0.0.0:15053", "[::]:15053"])]
    dns_listen: Vec<SocketAddr>,
    /// The proxy's resolv.conf: upstream resolvers (unless the policy's [dns] upstream is set)
    /// and the search domains whose expansions of allowed names are answered locally.
    #[arg(
        long,
        env = "TOLLGATE_DNS_RESOLV_CONF",
        default_value = "/etc/resolv.conf"
    )]
    dns_resolv_conf: PathBuf,
    /// Read-only usage port (the Python sidecar's): GET /api/v1/usage and /healthz.
    #[arg(long, env = "TOLLGATE_USAGE_LISTEN", default_value = "0.0.0.0:8080")]
    usage_listen: SocketAddr,
    /// Where the CA files are written (overrides the policy's [intercept.tls] output_dir).
    #[arg(long, env = "TOLLGATE_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Admin address: /metrics, /healthz, /readyz.
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN", default_value = "0.0.0.0:15090")]
    admin_listen: SocketAddr,
    /// Bound on reading a whole ClientHello (slow clients are cut).
    #[arg(long, env = "TOLLGATE_HELLO_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    hello_timeout: Duration,
    /// Connections open at once; more are refused and counted.
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// After SIGTERM/SIGINT, how long open connections may finish before they are cut.
    #[arg(long, env = "TOLLGATE_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Downward-API labels file that carries the Pod's phase label.
    #[arg(
        long,
        env = "TOLLGATE_LABELS_FILE",
        default_value = "/etc/podinfo/labels"
    )]
    labels_file: PathBuf,
    /// The label whose value ("agent" or "verification") is the phase.
    #[arg(long, env = "TOLLGATE_PHASE_LABEL", default_value = "ridges.ai/phase")]
    phase_label: String,
    /// Sentinel file: present means the verification phase (when no label says otherwise).
    #[arg(
        long,
        env = "TOLLGATE_UNLOCK_FILE",
        default_value = "/tmp/egress-unlocked"
    )]
    unlock_file: PathBuf,
    /// Log format (logs go to stderr; RUST_LOG filters).
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { file }) => check(&file),
        None => run(cli.run),
    }
}

fn check(file: &Path) -> ExitCode {
    match Policy::load(file).and_then(|mut p| p.apply_process_env().map(|()| p)) {
        Ok(policy) => {
            println!("ok: {}", policy.summary());
            for warning in policy.warnings() {
                println!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "tollgate cannot start");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let mut policy = load_policy(args.policy.as_deref())?;
    if let Some(dir) = &args.certs_dir {
        policy.policy.gateway.tls.output_dir = dir.clone();
    }
    let listeners = bind_all(&args.listen)?;
    let capture = bind_all(&args.capture_listen)?;
    let dns = bind_dns(&args.dns_listen)?;
    let admin = bind(args.admin_listen)
        .with_context(|| format!("cannot listen on {} (admin)", args.admin_listen))?;
    let settings = Settings {
        hello_timeout: args.hello_timeout,
        limits: Limits {
            max_connections: args.max_connections as usize,
            drain_timeout: args.drain_timeout,
        },
        phase_sources: phase::Sources {
            labels_file: args.labels_file,
            label_key: args.phase_label,
            unlock_file: args.unlock_file,
        },
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let mut server = Server::new(listeners, capture, Some(admin), settings, policy);
    server.dns = dns;
    server.resolv = crate::dns::ResolvConf::load(&args.dns_resolv_conf);
    if !server.policy.policy.intercept.is_empty() {
        let usage = bind(args.usage_listen)
            .with_context(|| format!("cannot listen on {} (usage)", args.usage_listen))?;
        server.usage = Some(usage);
        server.gateway = true;
    }
    server.run(shutdown).await?;
    Ok(())
}

fn load_policy(path: Option<&Path>) -> anyhow::Result<LoadedPolicy> {
    let (mut policy, text) = match path {
        None => (
            Policy::embedded_default(),
            DEFAULT_POLICY_TOML.as_bytes().to_vec(),
        ),
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let utf8 = std::str::from_utf8(&text)
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            (Policy::parse(utf8, &path.display().to_string())?, text)
        }
    };
    // The Python sidecar's environment (MAX_COST_USD, ...) overrides the file, on every load.
    policy.apply_process_env()?;
    for warning in policy.warnings() {
        tracing::warn!(%warning, "policy");
    }
    Ok(LoadedPolicy {
        policy,
        path: path.map(Path::to_owned),
        text,
    })
}

/// Binds every address; a v6 address on a kernel without IPv6 is skipped (there is no v6
/// traffic to capture either), any other failure is fatal.
fn bind_all(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for addr in addrs {
        match bind(*addr) {
            Ok(listener) => listeners.push(listener),
            Err(e)
                if addr.is_ipv6()
                    && e.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32) =>
            {
                tracing::warn!(%addr, "IPv6 is not available; not listening on it");
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
        }
    }
    anyhow::ensure!(
        !listeners.is_empty(),
        "no listener could be bound for {addrs:?}"
    );
    Ok(listeners)
}

/// Binds the DNS listeners (UDP and TCP per address), skipping IPv6 like [`bind_all`].
fn bind_dns(addrs: &[SocketAddr]) -> anyhow::Result<Vec<(tokio::net::UdpSocket, TcpListener)>> {
    let mut out = Vec::new();
    for addr in addrs {
        match crate::dns::listener::bind(*addr) {
            Ok(pair) => out.push(pair),
            Err(e)
                if addr.is_ipv6()
                    && e.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32) =>
            {
                tracing::warn!(%addr, "IPv6 is not available; no DNS listener on it");
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr} (dns)")),
        }
    }
    Ok(out)
}

/// Binds a listener; IPv6 sockets are v6-only so `0.0.0.0` and `[::]` can share a port.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will not drain");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "shutting down: no new connections, draining open ones"
    );
    shutdown.cancel();
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
