//! The command line (the binary's edge): flags and environment, subcommand dispatch, logging.

mod evidence;
mod serve;

pub(crate) use serve::load_policy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tollgate_policy::Policy;

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
///
/// A port another process holds is waited for (logged with its holder, /readyz not ready
/// meanwhile) instead of being a configuration error.
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
    /// Run a command behind the boundary a task Pod gets, on this machine (no Kubernetes).
    ///
    /// CMD runs in a new network namespace whose only way out is tollgate: the rules
    /// tollgate-init installs in a Pod, the same router, gateway, DNS, phases, policy, ledger and
    /// metrics. The host's network is not touched, and nothing is left after a crash. At the
    /// end a summary goes to stderr; the exit code is CMD's (128 + signal when killed; 125 when
    /// the sandbox cannot be built, 64 for a bad policy or flag).
    ///
    /// Example: `tollgate run -- curl https://example.com` (refused by the embedded default).
    /// As root CMD runs as --user (default 65534); without root, tollgate run needs unprivileged
    /// user namespaces.
    Run(crate::run::RunArgs),
    /// Internal: the step between tollgate run and its command.
    #[command(name = "run-exec", hide = true)]
    RunExec(crate::run::child::ExecArgs),
    /// Validate a policy file and print a short summary; exits non-zero with the error.
    Check {
        /// The policy TOML file.
        file: PathBuf,
    },
    /// Readiness for an exec probe: GET /readyz with a challenge only this Pod's tollgate can
    /// answer (its key is in --probe-secret-file); exits 0 when ready, 1 otherwise (including
    /// when something else holds the admin port).
    Probe {
        /// The admin address to probe.
        #[arg(long, default_value = "127.0.0.1:15090")]
        admin: SocketAddr,
        /// The key file tollgate writes at start.
        #[arg(long, env = "TOLLGATE_PROBE_SECRET_FILE", default_value = DEFAULT_PROBE_KEY)]
        probe_secret_file: PathBuf,
    },
    /// Check a data dir offline: proxy_decisions.jsonl's hash chain, and run_receipt.json's head
    /// and counts against it; exits 1 naming the first broken line or field.
    VerifyReceipt {
        /// The data dir (holds proxy_decisions.jsonl and run_receipt.json).
        dir: PathBuf,
    },
    /// Decide the connections of recorded runs again under a candidate policy and print what
    /// changes, grouped by host pattern and reason; exits 1 when anything is newly refused.
    Replay {
        /// The candidate policy TOML.
        #[arg(long)]
        policy: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// proxy_decisions.jsonl files.
        #[arg(required = true)]
        decisions: Vec<PathBuf>,
    },
    /// Print a minimal routing policy (TOML) that allows what an observe-mode run reached.
    Suggest {
        /// Replace two or more hosts under one parent domain by a wildcard.
        #[arg(long)]
        collapse_subdomains: bool,
        /// proxy_decisions.jsonl files of observe-mode runs.
        #[arg(required = true)]
        decisions: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

/// Where tollgate writes its probe key: the sidecar's own `/tmp` in the shipped manifests.
const DEFAULT_PROBE_KEY: &str = "/tmp/tollgate-probe-key";

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
    /// Connections open at once on the SNI and capture listeners; more are refused and counted.
    /// The default fits the 256 MiB memory limit of the shipped manifests (README: Resource bounds).
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Of those, intercepted (LLM gateway) connections open at once; more are closed after the
    /// ClientHello and logged as `intercept-limit`.
    #[arg(long, env = "TOLLGATE_MAX_INTERCEPTED_CONNECTIONS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_intercepted_connections: u32,
    /// Runtime worker threads; 0 means one per core. On two shared cores, 1 cut the gateway's
    /// CPU per request by about a quarter but the tunnel's small-request rate too (BENCHMARKS.md).
    #[arg(long, env = "TOLLGATE_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// Connections open at once on each read-only listener (admin, usage); more are closed at
    /// once and counted.
    #[arg(long, env = "TOLLGATE_READ_ONLY_MAX_CONNECTIONS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    read_only_max_connections: u32,
    /// How long a client of a read-only listener may take to send its request headers.
    #[arg(long, env = "TOLLGATE_READ_ONLY_HEADER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    read_only_header_timeout: Duration,
    /// Bytes of request bodies (counted with their parsed JSON) the LLM gateway holds across all
    /// requests at once; over it a request waits up to 5 s, then gets 503. Suffixes KiB, MiB.
    #[arg(long, env = "TOLLGATE_BODY_BUDGET", default_value = "48MiB")]
    body_budget: ByteSize,
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
    /// File for the key `tollgate probe` checks /readyz answers with (rewritten at each start,
    /// mode 0600); keep it where the agent cannot read it.
    #[arg(long, env = "TOLLGATE_PROBE_SECRET_FILE", default_value = DEFAULT_PROBE_KEY)]
    probe_secret_file: PathBuf,
    /// Where the hash-chained decision log (proxy_decisions.jsonl) and run_receipt.json go.
    /// Default: the policy's [intercept.budget] data_dir when the gateway runs, else none.
    #[arg(long, env = "TOLLGATE_EVIDENCE_DIR")]
    evidence_dir: Option<PathBuf>,
    /// Observe mode (never for an untrusted agent): the agent phase routes as verification
    /// would and the decision log records what the agent-phase policy would have decided, for
    /// `tollgate suggest`.
    #[arg(long, env = "TOLLGATE_OBSERVE")]
    observe: bool,
    /// Bound on proxy_decisions.jsonl (it shares the data dir with the spend ledger); records
    /// beyond it are counted in the receipt, not written. Suffixes KiB, MiB.
    #[arg(long, env = "TOLLGATE_EVIDENCE_MAX_BYTES", default_value = "16MiB")]
    evidence_max_bytes: ByteSize,
    /// At shutdown the decision log's head is written here if the file exists (kubelet creates
    /// it), for tollgate-launch to record on the Pod.
    #[arg(
        long,
        env = "TOLLGATE_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    termination_log: PathBuf,
    /// Log format (logs go to stderr; RUST_LOG filters).
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // clap would exit 2; a bad flag is a bad configuration like any other (64).
            // `--help` and `--version` also arrive here, on stdout, and succeed.
            return if error.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Some(Command::Check { file }) => check(&file),
        Some(Command::Probe {
            admin,
            probe_secret_file,
        }) => match crate::probe::run(admin, &probe_secret_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tollgate probe: {error}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Run(args)) => crate::run::main(args),
        Some(Command::RunExec(args)) => crate::run::child::main(args),
        Some(Command::VerifyReceipt { dir }) => evidence::verify_receipt(&dir),
        Some(Command::Replay {
            policy,
            format,
            decisions,
        }) => evidence::replay(&policy, &decisions, matches!(format, ReportFormat::Json)),
        Some(Command::Suggest {
            collapse_subdomains,
            decisions,
        }) => evidence::suggest(&decisions, collapse_subdomains),
        None => serve::run(cli.run),
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

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: container logs are never one, and escape codes
    // there are noise. NO_COLOR (https://no-color.org) turns it off everywhere.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
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

/// A byte count on the command line: a number, optionally with `KiB`, `MiB` or `GiB`.
#[derive(Clone, Copy, Debug)]
struct ByteSize(usize);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => s.split_at(i),
            None => (s, ""),
        };
        let scale: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => return Err(format!("unknown unit {other:?} (use KiB, MiB or GiB)")),
        };
        let n: usize = digits
            .parse()
            .map_err(|_| format!("expected a number of bytes, got {s:?}"))?;
        match n.checked_mul(scale) {
            Some(bytes) if bytes > 0 => Ok(ByteSize(bytes)),
            Some(_) => Err("must be more than 0 bytes".to_owned()),
            None => Err(format!("{s} is too large")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn byte_sizes_parse() {
        let parse = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("1024"), Ok(1024));
        assert_eq!(parse("8 KiB"), Ok(8 << 10));
        assert!(parse("0").is_err());
        assert!(parse("12MB").is_err());
        assert!(parse("MiB").is_err());
    }
}
