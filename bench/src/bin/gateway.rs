//! `tollgate-bench-gateway`: parse flags → run → print the report (progress on stderr, the
//! Markdown report on stdout). The harness is `src/gateway.rs`.

#![forbid(unsafe_code)]

#[path = "../gateway.rs"]
mod gateway;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::{Config, Scenario, Target};

/// Non-streaming and streaming chat completions through tollgate's LLM gateway vs straight to
/// a fake OpenRouter: requests/s at concurrency 1 and N, latency percentiles, the latency the
/// proxy adds, time to the first SSE event; prints Markdown tables.
#[derive(Debug, Parser)]
#[command(name = "tollgate-bench-gateway")]
struct Cli {
    /// Rounds; the report gives the median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Timed chat requests per concurrency-1 sample.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Untimed requests before each concurrency-1 sample.
    #[arg(long, default_value_t = 500)]
    warmup_requests: usize,
    /// Timed streams per SSE sample.
    #[arg(long, default_value_t = 1000)]
    sse_requests: usize,
    /// Keep-alive connections of the concurrent scenario.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Timed window of the concurrent scenario.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Untimed run before the concurrent window.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Smoke run: one short round (overrides the counts and durations above).
    #[arg(long)]
    quick: bool,
    /// Scenarios, comma-separated: chat, chat-h2, chat-concurrent, sse.
    #[arg(long, value_delimiter = ',', default_values = ["chat", "chat-h2", "chat-concurrent", "sse"])]
    scenarios: Vec<String>,
    /// Targets, comma-separated: direct, tollgate, tollgate-info (RUST_LOG=info), candidate
    /// (runs when --candidate-bin is given, whatever this list says). Added latency needs direct.
    #[arg(long, value_delimiter = ',', default_values = ["direct", "tollgate", "tollgate-info"])]
    targets: Vec<String>,
    /// The tollgate binary (default: `tollgate` next to this executable, i.e. target/release).
    #[arg(long, env = "TOLLGATE_BIN")]
    tollgate_bin: Option<PathBuf>,
    /// Another tollgate build, or a wrapper script that changes its environment, measured as
    /// target `candidate` in the same rounds (A/B an optimisation).
    #[arg(long)]
    candidate_bin: Option<PathBuf>,
    /// When other processes kept more than this % of the machine busy during a sample, wait for
    /// quiet and measure it again (100: never).
    #[arg(long, default_value_t = 15.0)]
    max_other_load: f64,
}

fn main() -> ExitCode {
    let config = match config(Cli::parse()) {
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
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gateway::run(&config, |line| eprintln!("{line}"))) {
        Ok(report) => {
            println!("{}", report.markdown());
            if report.total_errors() > 0 {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config(cli: Cli) -> anyhow::Result<Config> {
    let bin = match cli.tollgate_bin {
        Some(bin) => bin,
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("tollgate"))
            .ok_or_else(|| anyhow::anyhow!("this executable has no directory"))?,
    };
    anyhow::ensure!(
        bin.is_file(),
        "tollgate binary {} not found: build it (cargo build --release -p tollgate) or pass --tollgate-bin",
        bin.display()
    );
    anyhow::ensure!(
        (0.0..=100.0).contains(&cli.max_other_load),
        "--max-other-load is a percentage"
    );
    anyhow::ensure!(cli.concurrency > 0, "--concurrency must be at least 1");
    let scenarios = cli
        .scenarios
        .iter()
        .map(|name| {
            Scenario::ALL
                .into_iter()
                .find(|s| s.flag() == name)
                .ok_or_else(|| anyhow::anyhow!("unknown scenario {name:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut targets = cli
        .targets
        .iter()
        .map(|name| {
            Target::ALL
                .into_iter()
                .find(|t| t.flag() == name)
                .ok_or_else(|| anyhow::anyhow!("unknown target {name:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    targets.retain(|t| *t != Target::Candidate);
    if let Some(bin) = &cli.candidate_bin {
        anyhow::ensure!(
            bin.is_file(),
            "candidate binary {} not found",
            bin.display()
        );
        targets.push(Target::Candidate);
    }
    anyhow::ensure!(
        !scenarios.is_empty() && !targets.is_empty(),
        "nothing to measure"
    );
    let config = Config {
        scenarios,
        targets,
        candidate_bin: cli.candidate_bin,
        rounds: cli.rounds as usize,
        requests: cli.requests,
        warmup_requests: cli.warmup_requests,
        sse_requests: cli.sse_requests,
        concurrency: cli.concurrency,
        window: cli.window,
        warmup: cli.warmup,
        max_other_busy: cli.max_other_load / 100.0,
        ..Config::new(bin)
    };
    Ok(if cli.quick { config.quick() } else { config })
}
