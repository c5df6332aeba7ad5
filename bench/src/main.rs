//! `tollgate-bench`: parse flags → run → print the report (progress on stderr, report on stdout).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tollgate_bench::Config;
use tollgate_bench::load::Scenario;
use tollgate_bench::target::{self, HaproxySettings, Kind};

/// Throughput, small-request rate and new-connection rate against a local TLS origin: directly,
/// through tollgate and through HAProxy; prints Markdown tables with the ratios.
#[derive(Debug, Parser)]
#[command(name = "tollgate-bench")]
struct Cli {
    /// Timed window of each measurement.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Untimed run before each window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Rounds; the report gives the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Smoke run: 1 s windows, 200 ms warm-up, one round (overrides the three flags above).
    #[arg(long)]
    quick: bool,
    /// Keep-alive connections for throughput and small requests.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// New connections in flight at once.
    #[arg(long, default_value_t = 16)]
    new_conn_concurrency: usize,
    /// Scenarios, comma-separated: throughput, small, newconn.
    #[arg(long, value_delimiter = ',', default_values = ["throughput", "small", "newconn"])]
    scenarios: Vec<String>,
    /// Targets, comma-separated: direct, tollgate, tollgate-nolog, tollgate-1t (`--worker-threads
    /// 1`), haproxy, haproxy-1t, haproxy-1t-log (also logs each connection), candidate
    /// (`candidate` runs when --candidate-bin is given, whatever this list says).
    #[arg(long, value_delimiter = ',', default_values = ["direct", "tollgate", "tollgate-nolog", "haproxy", "haproxy-1t"])]
    targets: Vec<String>,
    /// The tollgate binary (default: `tollgate` next to this executable, i.e. target/release).
    #[arg(long, env = "TOLLGATE_BIN")]
    tollgate_bin: Option<PathBuf>,
    /// The HAProxy binary (default: `haproxy` on PATH; skipped when there is none).
    #[arg(long)]
    haproxy_bin: Option<PathBuf>,
    /// Another tollgate build to measure as target `candidate` (A/B an optimisation).
    #[arg(long)]
    candidate_bin: Option<PathBuf>,
    /// Extra flags for the candidate, space-separated (e.g. `--worker-threads 1`).
    #[arg(long, allow_hyphen_values = true)]
    candidate_args: Option<String>,
    /// Run tollgate without its decision log (by default each writes one, as the sidecar does
    /// when its gateway runs).
    #[arg(long)]
    no_evidence: bool,
    /// HAProxy `nbthread` of target `haproxy` (`haproxy-1t` always has 1; see BENCHMARKS.md).
    #[arg(long, default_value_t = 2)]
    haproxy_nbthread: u32,
    /// HAProxy `option splice-auto`.
    #[arg(long)]
    haproxy_splice: bool,
    /// When other processes kept more than this % of the machine busy during a sample, wait
    /// (up to 2 min) for the machine to go quiet and measure it again (100: never).
    #[arg(long, default_value_t = 10.0)]
    max_other_load: f64,
    /// How often one sample may be measured again for noise before it is kept anyway.
    #[arg(long, default_value_t = 3)]
    noisy_retries: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tollgate_bench::run(&config, |line| eprintln!("{line}"))) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config(cli: Cli) -> Result<Config, String> {
    let tollgate_bin = match cli.tollgate_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this executable: {e}"))?
            .with_file_name("tollgate"),
    };
    if !tollgate_bin.is_file() {
        return Err(format!(
            "{} not found: run `cargo build --release -p tollgate`, or set TOLLGATE_BIN",
            tollgate_bin.display()
        ));
    }
    let haproxy_bin = cli.haproxy_bin.or_else(|| target::find_on_path("haproxy"));
    let mut config = Config::new(tollgate_bin, haproxy_bin);
    config.candidate_bin = cli.candidate_bin;
    config.candidate_args = cli
        .candidate_args
        .as_deref()
        .map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    config.evidence = !cli.no_evidence;
    config.max_other_load = cli.max_other_load / 100.0;
    config.noisy_retries = cli.noisy_retries;
    config.load.duration = cli.duration;
    config.load.warmup = cli.warmup;
    config.rounds = cli.rounds as usize;
    if cli.quick {
        config.load.duration = Duration::from_secs(1);
        config.load.warmup = Duration::from_millis(200);
        config.rounds = 1;
    }
    config.load.connections = cli.connections.max(1);
    config.load.new_conn_concurrency = cli.new_conn_concurrency.max(1);
    config.scenarios = cli
        .scenarios
        .iter()
        .map(|s| {
            Scenario::ALL
                .into_iter()
                .find(|x| x.name() == s)
                .ok_or_else(|| format!("unknown scenario {s:?}"))
        })
        .collect::<Result<_, _>>()?;
    config.targets = cli
        .targets
        .iter()
        .map(|t| Kind::parse(t).ok_or_else(|| format!("unknown target {t:?}")))
        .collect::<Result<_, _>>()?;
    if config.candidate_bin.is_some() && !config.targets.contains(&Kind::Candidate) {
        // Measured right after the build it is compared with.
        let at = config
            .targets
            .iter()
            .position(|k| *k == Kind::Tollgate)
            .map_or(0, |i| i + 1);
        config.targets.insert(at, Kind::Candidate);
    }
    config.haproxy = HaproxySettings {
        nbthread: cli.haproxy_nbthread.max(1),
        splice: cli.haproxy_splice,
        maxconn: 4096,
        log: false,
    };
    Ok(config)
}
