//! `tollgate run`: one command behind exactly the boundary a task Pod gets, on one Linux machine.
//!
//! ```text
//! run::main → userns (rootless only) → sandbox (new netns: lo, tollgate-init's rules, listeners)
//!           → Server (the same assembly as the sidecar) → child (CMD, unprivileged, in the sandbox)
//!           → signals forwarded, SIGUSR1 = phase flip → CMD exits → drain → summary → CMD's code
//! ```
//!
//! Network namespaces belong to threads. tollgate keeps its process (the tokio runtime, so every
//! upstream socket: tunnels, the gateway's client, DNS forwarding) in the caller's namespace; one
//! thread ([`sandbox`]) moves into a new namespace, installs the rules there and creates the
//! listening sockets, which stay in it. The namespace has only `lo`: with the rules flushed there
//! would still be no route out, and nothing of it outlives the last process or socket that uses
//! it, so a `kill -9` leaves nothing to clean up on the host.
//!
//! - [`sandbox`]: the namespace, its rules and listeners; starts CMD inside it and waits for it.
//! - [`child`]: `tollgate run-exec`, the step between fork and CMD (parent-death signal, no
//!   capabilities), written as a re-exec so that no `unsafe` `pre_exec` is needed.
//! - [`userns`]: rootless mode: a user namespace that gives CAP_NET_ADMIN over the sandbox only.
//! - [`summary`]: the end-of-run report, read from the metrics and the decision log lines.

pub mod child;
mod sandbox;
mod summary;
mod userns;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use tollgate_policy::money::Micros;

use crate::accept::Limits;
use crate::admin::{ReadOnlyLimits, Readiness};
use crate::cli::{LogFormat, load_policy};
use crate::intercept::gateway::Capacity;
use crate::metrics::Metrics;
use crate::phase;
use crate::server::{Server, Settings};

/// Exit code when tollgate run itself fails (not CMD): the sandbox cannot be built.
pub const EXIT_SANDBOX: u8 = 125;

/// The sentinel file (in the data directory) whose presence means the verification phase.
pub const PHASE_FILE: &str = "verification";

/// `tollgate run [OPTIONS] -- CMD [ARGS...]`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy TOML file (watched and hot-reloaded). Default: the embedded policy (agent phase,
    /// intercept openrouter.ai, nothing else allowed).
    #[arg(long, env = "TOLLGATE_POLICY")]
    policy: Option<PathBuf>,
    /// The LLM budget in USD (overrides the policy's max_cost_usd and MAX_COST_USD at start).
    #[arg(long, value_parser = parse_usd)]
    budget_usd: Option<Micros>,
    /// The phase CMD starts in. SIGUSR1 to tollgate run, or creating `<data-dir>/verification`,
    /// switches to verification while it runs.
    #[arg(long, value_enum, default_value_t = PhaseArg::Agent)]
    phase: PhaseArg,
    /// Where the ledger, usage files, CA files (`certs/`) and the log (`tollgate.log`) go.
    /// Default: a new directory under $TMPDIR, printed at start and kept.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// As root: the UID (and GID) CMD runs as, so it holds no capability over the sandbox's
    /// rules. Rootless, CMD runs in a nested user namespace instead.
    #[arg(long, default_value_t = 65534)]
    user: u32,
    /// After CMD exits, how long its open connections may finish.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Format of the log written to `<data-dir>/tollgate.log` (RUST_LOG filters).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
    command: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PhaseArg {
    Agent,
    Verification,
}

fn parse_usd(s: &str) -> Result<Micros, String> {
    Micros::parse_usd(s).map_err(|e| e.to_string())
}

/// The listener ports inside the sandbox (only CMD can reach them; the Pod's numbers).
const SNI_PORT: u16 = 15443;
const CAPTURE_PORT: u16 = 15001;
const DNS_PORT: u16 = 15053;
const ADMIN_PORT: u16 = 15090;
const USAGE_PORT: u16 = 8080;

/// Runs `tollgate run`; the exit code is CMD's (128 + signal when a signal ended it).
pub fn main(args: RunArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("tollgate run: {error:#}");
            ExitCode::from(code)
        }
    }
}

struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn fail(code: u8) -> impl FnOnce(anyhow::Error) -> Failure {
    move |error| Failure { code, error }
}

fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    // Rootless: the user namespace must come before any thread exists (the runtime's included).
    let rootless = !nix::unistd::geteuid().is_root();
    if rootless {
        userns::enter().map_err(|e| fail(EXIT_SANDBOX)(e.into()))?;
    }
    let data = prepare_data_dir(args.data_dir.as_deref()).map_err(fail(EXIT_SANDBOX))?;
    let refused = init_logging(&data, args.log_format).map_err(fail(EXIT_SANDBOX))?;
    eprintln!(
        "tollgate run: data directory {} (log: tollgate.log)",
        data.display()
    );
    let mut policy = load_policy(args.policy.as_deref()).map_err(fail(crate::cli::EXIT_CONFIG))?;
    let gateway = &mut policy.policy.gateway;
    gateway.tls.output_dir = data.join("certs");
    gateway.budget.data_dir = data.clone();
    if let Some(budget) = args.budget_usd {
        gateway.budget.max_cost_micros = Some(budget);
    }
    let budget = gateway.budget.max_cost_micros;
    let unlock_file = data.join(PHASE_FILE);
    if args.phase == PhaseArg::Verification {
        std::fs::write(&unlock_file, b"")
            .with_context(|| format!("cannot write {}", unlock_file.display()))
            .map_err(fail(EXIT_SANDBOX))?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .map_err(fail(EXIT_SANDBOX))?;
    let with_gateway = !policy.policy.intercept.is_empty();
    let ports = sandbox::Ports {
        sni: SNI_PORT,
        capture: CAPTURE_PORT,
        dns: DNS_PORT,
        admin: ADMIN_PORT,
        usage: with_gateway.then_some(USAGE_PORT),
    };
    let (listeners, spawner) = sandbox::create(runtime.handle().clone(), ports)
        .map_err(|e| fail(EXIT_SANDBOX)(e.into()))?;
    tracing::info!(rootless, "sandbox ready");

    let metrics = Metrics::new();
    let ready = Arc::new(Readiness::default());
    let mut server = assemble(
        listeners,
        policy,
        with_gateway,
        &data,
        &unlock_file,
        args.drain_timeout,
    );
    server.metrics = metrics.clone();
    server.ready = ready.clone();

    let child = sandbox::ChildSpec {
        argv: args.command,
        env: ca_env(&data.join("certs"), with_gateway),
        uid: (!rootless).then_some(args.user),
    };
    let status = runtime.block_on(supervise(server, ready, spawner, child, unlock_file));
    let status = status.map_err(fail(EXIT_SANDBOX))?;
    summary::print(&metrics, &refused, budget, &data);
    Ok(ExitCode::from(status.code()))
}

/// The same [`Server`] the sidecar runs, on the sandbox's listeners, with the sidecar's default
/// limits; the phase comes from the sentinel in the data directory.
fn assemble(
    listeners: sandbox::Listeners,
    policy: crate::server::LoadedPolicy,
    with_gateway: bool,
    data: &Path,
    unlock_file: &Path,
    drain_timeout: Duration,
) -> Server {
    let read_only = ReadOnlyLimits {
        max_connections: 32,
        header_timeout: Duration::from_secs(5),
    };
    let settings = Settings {
        hello_timeout: Duration::from_secs(10),
        limits: Limits {
            max_connections: 512,
            drain_timeout,
        },
        phase_sources: phase::Sources {
            // No labels file: the sentinel in the data directory is the run's phase switch.
            labels_file: data.join("labels"),
            label_key: "ridges.ai/phase".to_owned(),
            unlock_file: unlock_file.to_owned(),
        },
        read_only,
        gateway: Capacity {
            body_budget: 48 << 20,
            max_connections: 128,
        },
    };
    let mut server = Server::new(
        listeners.sni,
        listeners.capture,
        Some(listeners.admin),
        settings,
        policy,
    );
    server.usage = listeners.usage;
    server.gateway = with_gateway;
    server.dns = listeners.dns;
    server.resolv = crate::dns::ResolvConf::load(Path::new("/etc/resolv.conf"));
    server
}

/// How CMD ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl Ended {
    /// The shell's convention: the exit code, or 128 + the signal number.
    fn code(self) -> u8 {
        match self {
            Ended::Exited(c) => (c & 0xff) as u8,
            Ended::Signaled(s) => (128 + s).clamp(0, 255) as u8,
        }
    }
}

/// Serves until CMD has run: starts the server, waits until it is ready (CA files written),
/// starts CMD, forwards signals to its process group, flips the phase on SIGUSR1, and after CMD
/// ends kills what is left of its group and drains the server.
async fn supervise(
    server: Server,
    ready: Arc<Readiness>,
    spawner: sandbox::Spawner,
    child: sandbox::ChildSpec,
    unlock_file: PathBuf,
) -> anyhow::Result<Ended> {
    use tokio::signal::unix::{SignalKind, signal};
    let shutdown = CancellationToken::new();
    let mut serving = tokio::spawn(server.run(shutdown.clone()));
    while !ready.get() {
        if serving.is_finished() {
            let result = (&mut serving).await.context("the server task failed")?;
            result.context("tollgate cannot start")?;
            anyhow::bail!("the server stopped before it was ready");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (pid, mut ended) = spawner.spawn(child).await?;
    tracing::info!(pid, "command started");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let status = loop {
        let forward = tokio::select! {
            status = &mut ended => break status.context("lost the command's exit status")?,
            _ = term.recv() => Signal::SIGTERM,
            _ = int.recv() => Signal::SIGINT,
            _ = hup.recv() => Signal::SIGHUP,
            _ = usr1.recv() => {
                match std::fs::write(&unlock_file, b"") {
                    Ok(()) => tracing::info!(file = %unlock_file.display(), "SIGUSR1: switching to the verification phase"),
                    Err(error) => tracing::error!(%error, "SIGUSR1: cannot write the phase file"),
                }
                continue;
            }
        };
        tracing::info!(signal = forward.as_str(), pid, "forwarding to the command");
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), forward);
    };
    // Whatever CMD left behind in its process group dies with it.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    tracing::info!(?status, "command ended; draining");
    shutdown.cancel();
    match serving.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "server"),
        Err(error) => tracing::error!(%error, "server task"),
    }
    Ok(status)
}

/// The variables that make CMD's TLS clients trust the gateway's CA (with the system roots, as
/// `ca-bundle.crt` holds both). Without a gateway there is no CA, and nothing is set.
fn ca_env(certs: &Path, gateway: bool) -> Vec<(OsString, OsString)> {
    if !gateway {
        return Vec::new();
    }
    let bundle = certs.join("ca-bundle.crt");
    let ca = certs.join("ca.crt");
    [
        ("SSL_CERT_FILE", &bundle),
        ("REQUESTS_CA_BUNDLE", &bundle),
        ("CURL_CA_BUNDLE", &bundle),
        ("GIT_SSL_CAINFO", &bundle),
        // Node adds these to its own roots: the CA alone.
        ("NODE_EXTRA_CA_CERTS", &ca),
    ]
    .into_iter()
    .map(|(k, v)| (OsString::from(k), v.clone().into_os_string()))
    .collect()
}

/// The data directory: the one given, or a new one under $TMPDIR (kept after the run). Mode
/// 0755: CMD (another UID) reads the CA files but cannot write anything here.
fn prepare_data_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match given {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::path::absolute(dir)?
        }
        None => tempfile::Builder::new()
            .prefix("tollgate-run-")
            .tempdir()
            .context("cannot create a data directory")?
            .keep(),
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    Ok(dir)
}

/// Logs go to `<data>/tollgate.log` (CMD owns the terminal); the summary reads the decision
/// lines through a layer on the same subscriber.
fn init_logging(data: &Path, format: LogFormat) -> anyhow::Result<summary::Refused> {
    use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, filter::Targets};
    let path = data.join("tollgate.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(Arc::new(file));
    let refused = summary::Refused::default();
    // Its own filter: RUST_LOG quietens the file, never the summary.
    let decisions = summary::DecisionLayer(refused.clone())
        .with_filter(Targets::new().with_target("tollgate::connection", tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(decisions);
    match format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).try_init()?,
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .try_init()?,
    }
    Ok(refused)
}
