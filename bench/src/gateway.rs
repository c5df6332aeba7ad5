//! The LLM gateway benchmark (issue 3): chat completions through tollgate against the same
//! requests sent straight to the fake OpenRouter, in one run.
//!
//! Layout (one run, top to bottom):
//!
//! ```text
//! rounds × { world → scenarios × targets (interleaved, order rotated) → load } → stats → report
//! ```
//!
//! - [`world`]: the fake OpenRouter (test support, in this process) and tollgate child processes
//!   (`RUST_LOG=warn`; `info` to price the log; a candidate build to A/B), with a policy aiming
//!   openrouter.ai at the fake.
//! - [`load`]: keep-alive rustls + hyper clients (h1 / h2), closed loops, CPU accounting.
//! - [`stats`]: percentiles of one sample; medians and ranges across rounds.
//! - [`report`]: Markdown tables, the added latency and the verdict against the aim.
//!
//! Every round starts a fresh world, so the fake's request records and tollgate's ledger start
//! empty. This module is included by path from `src/bin/gateway.rs` and from the smoke test
//! (not from `lib.rs`, the L4 benchmark's), so its files name siblings with `super::`.

#[path = "gateway/load.rs"]
pub mod load;
#[path = "gateway/report.rs"]
pub mod report;
#[path = "gateway/stats.rs"]
pub mod stats;
#[path = "gateway/world.rs"]
pub mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tollgate_bench::proc::{self, Machine};

use self::load::{Endpoint, Exchange, Proto, Sample};
use self::world::{LogLevel, World};

/// What clients dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The fake OpenRouter itself.
    Direct,
    /// tollgate with `RUST_LOG=warn` (the measurement).
    Tollgate,
    /// tollgate with `RUST_LOG=info` (a line per request and per connection).
    TollgateInfo,
    /// Another tollgate build (or a wrapper script that changes its environment), with
    /// `RUST_LOG=warn`: to A/B an optimisation in the same run.
    Candidate,
}

impl Target {
    /// Every target, in report order.
    pub const ALL: [Target; 4] = [
        Target::Direct,
        Target::Tollgate,
        Target::TollgateInfo,
        Target::Candidate,
    ];

    /// The column header.
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Tollgate => "tollgate",
            Target::TollgateInfo => "tollgate, RUST_LOG=info",
            Target::Candidate => "candidate",
        }
    }

    /// The command-line name.
    pub fn flag(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Tollgate => "tollgate",
            Target::TollgateInfo => "tollgate-info",
            Target::Candidate => "candidate",
        }
    }

    /// The proxy's log level; None for direct.
    pub fn log_level(self) -> Option<LogLevel> {
        match self {
            Target::Direct => None,
            Target::Tollgate | Target::Candidate => Some(LogLevel::Warn),
            Target::TollgateInfo => Some(LogLevel::Info),
        }
    }
}

/// One kind of measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Non-streaming chat, HTTP/1.1, one connection, back to back.
    Chat1,
    /// The same over h2.
    Chat1H2,
    /// Non-streaming chat, HTTP/1.1, `concurrency` connections, for a time window.
    ChatN,
    /// Streaming chat, HTTP/1.1, one connection: time to the first SSE event.
    Sse1,
}

impl Scenario {
    /// Every scenario, in run and report order.
    pub const ALL: [Scenario; 4] = [
        Scenario::Chat1,
        Scenario::Chat1H2,
        Scenario::ChatN,
        Scenario::Sse1,
    ];

    /// The command-line name.
    pub fn flag(self) -> &'static str {
        match self {
            Scenario::Chat1 => "chat",
            Scenario::Chat1H2 => "chat-h2",
            Scenario::ChatN => "chat-concurrent",
            Scenario::Sse1 => "sse",
        }
    }

    /// A short label (`c` is the concurrency of [`Scenario::ChatN`]).
    pub fn label(self, c: usize) -> String {
        match self {
            Scenario::Chat1 => "chat, HTTP/1.1, c=1".into(),
            Scenario::Chat1H2 => "chat, h2, c=1".into(),
            Scenario::ChatN => format!("chat, HTTP/1.1, c={c}"),
            Scenario::Sse1 => "SSE first event, HTTP/1.1, c=1".into(),
        }
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The tollgate binary.
    pub tollgate_bin: PathBuf,
    /// The binary of [`Target::Candidate`].
    pub candidate_bin: Option<PathBuf>,
    /// Rounds; each scenario × target is measured once per round, the median is reported.
    pub rounds: usize,
    /// Untimed exchanges before each c=1 sample.
    pub warmup_requests: usize,
    /// Timed chat exchanges per c=1 sample.
    pub requests: usize,
    /// Timed streams per SSE sample.
    pub sse_requests: usize,
    /// Connections of [`Scenario::ChatN`].
    pub concurrency: usize,
    /// Untimed run before each [`Scenario::ChatN`] window.
    pub warmup: Duration,
    /// The [`Scenario::ChatN`] window.
    pub window: Duration,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Targets, in order (rotated each round).
    pub targets: Vec<Target>,
    /// A sample taken while other processes kept more than this share of the machine busy
    /// (0–1) is measured again, up to `noisy_retries` times.
    pub max_other_busy: f64,
    /// How often a noisy sample is measured again before it is kept anyway.
    pub noisy_retries: u32,
}

impl Config {
    /// The full benchmark with `bin`.
    pub fn new(tollgate_bin: PathBuf) -> Config {
        Config {
            tollgate_bin,
            candidate_bin: None,
            rounds: 5,
            warmup_requests: 500,
            requests: 4000,
            sse_requests: 1000,
            concurrency: 64,
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(3),
            scenarios: Scenario::ALL.to_vec(),
            targets: vec![Target::Direct, Target::Tollgate, Target::TollgateInfo],
            max_other_busy: 0.15,
            noisy_retries: 2,
        }
    }

    /// A smoke run: one short round (a few seconds).
    pub fn quick(self) -> Config {
        Config {
            rounds: 1,
            warmup_requests: 50,
            requests: 300,
            sse_requests: 50,
            warmup: Duration::from_millis(100),
            window: Duration::from_millis(300),
            ..self
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// The run's settings.
    pub config: Config,
    /// Where it ran.
    pub machine: Machine,
    /// Load averages before and after.
    pub load: (String, String),
    /// tollgate's `--version`.
    pub version: String,
    /// Per scenario and target, one sample per round, in round order.
    pub samples: BTreeMap<(Scenario, Target), Vec<Sample>>,
    /// Log bytes tollgate wrote per chat request at `RUST_LOG=info` (c=1 runs).
    pub info_log_bytes_per_request: Vec<f64>,
    /// Samples measured again because the machine was busy with other work.
    pub retried: u32,
    /// Samples kept although the machine was busy.
    pub noisy_kept: u32,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Runs the benchmark; `progress` gets one line per sample.
pub async fn run(config: &Config, mut progress: impl FnMut(&str)) -> Result<Report> {
    let started = Instant::now();
    let load_before = proc::load_average();
    let mut samples: BTreeMap<(Scenario, Target), Vec<Sample>> = BTreeMap::new();
    let mut info_log = Vec::new();
    let (mut retried, mut noisy_kept) = (0, 0);
    for round in 0..config.rounds {
        wait_for_quiet(config.max_other_busy, &mut progress).await;
        let candidate = config.candidate_bin.as_deref();
        let world = World::start(&config.tollgate_bin, candidate, &config.targets).await?;
        let mut order = endpoints(&world, &config.targets)?;
        // Rotate the order each round so no target always runs first (or right after another).
        let shift = round % order.len().max(1);
        order.rotate_left(shift);
        for &scenario in &config.scenarios {
            for (target, endpoint) in &order {
                world.only_run(*target)?;
                let pid = world.proxy(*target).map(|p| p.pid());
                let log_before = world.proxy(Target::TollgateInfo).map(|p| p.log_bytes());
                let mut tries = 0;
                let sample = loop {
                    let conns_before = world.gateway.fake.connections();
                    let mut sample = measure(config, scenario, endpoint, pid)
                        .await
                        .with_context(|| format!("{} via {}", scenario.label(1), target.name()))?;
                    sample.upstream_connections = world.gateway.fake.connections() - conns_before;
                    let busy = sample.other_busy.unwrap_or(0.0);
                    if busy <= config.max_other_busy {
                        break sample;
                    }
                    if tries == config.noisy_retries {
                        noisy_kept += 1;
                        break sample;
                    }
                    tries += 1;
                    retried += 1;
                    progress(&format!(
                        "  {:.0}% of the machine busy with other work: measuring again",
                        busy * 100.0
                    ));
                    wait_for_quiet(config.max_other_busy, &mut progress).await;
                };
                if (scenario, *target) == (Scenario::Chat1, Target::TollgateInfo)
                    && let (Some(before), Some(p)) = (log_before, world.proxy(Target::TollgateInfo))
                {
                    let exchanges =
                        (config.warmup_requests + config.requests) * (tries as usize + 1);
                    info_log.push((p.log_bytes() - before) as f64 / exchanges as f64);
                }
                progress(&progress_line(config, round, scenario, *target, &sample));
                samples.entry((scenario, *target)).or_default().push(sample);
            }
        }
    }
    let version = std::process::Command::new(&config.tollgate_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok(Report {
        config: config.clone(),
        machine: Machine::read(),
        load: (load_before, proc::load_average()),
        version,
        samples,
        info_log_bytes_per_request: info_log,
        retried,
        noisy_kept,
        elapsed: started.elapsed(),
    })
}

/// Each target's client endpoint: the fake trusted through its own CA, tollgate through the
/// per-Pod CA it wrote.
fn endpoints(world: &World, targets: &[Target]) -> Result<Vec<(Target, Endpoint)>> {
    targets
        .iter()
        .map(|&t| {
            let endpoint = match world.proxy(t) {
                None => {
                    let fake = &world.gateway.fake;
                    Endpoint::new(fake.addr(), fake.ca().pem().as_bytes())?
                }
                Some(p) => Endpoint::new(p.sni, &p.ca_pem)?,
            };
            Ok((t, endpoint))
        })
        .collect()
}

async fn measure(
    config: &Config,
    scenario: Scenario,
    endpoint: &Endpoint,
    pid: Option<u32>,
) -> Result<Sample> {
    let (warm, n) = (config.warmup_requests, config.requests);
    match scenario {
        Scenario::Chat1 => {
            load::sequential(endpoint, Proto::H1, Exchange::Chat, warm, n, pid).await
        }
        Scenario::Chat1H2 => {
            load::sequential(endpoint, Proto::H2, Exchange::Chat, warm, n, pid).await
        }
        Scenario::ChatN => {
            let (c, w, d) = (config.concurrency, config.warmup, config.window);
            load::concurrent(endpoint, Proto::H1, Exchange::Chat, c, w, d, pid).await
        }
        Scenario::Sse1 => {
            let (warm, n) = (warm.min(config.sse_requests / 5), config.sse_requests);
            load::sequential(endpoint, Proto::H1, Exchange::FirstEvent, warm, n, pid).await
        }
    }
}

fn progress_line(
    config: &Config,
    round: usize,
    scenario: Scenario,
    target: Target,
    s: &Sample,
) -> String {
    let mut line = format!(
        "round {}/{}  {:<32} {:<24} {:>8.0}/s  p50 {:>6.0} µs  p99 {:>6.0} µs  p99.9 {:>6.0} µs",
        round + 1,
        config.rounds,
        scenario.label(config.concurrency),
        target.name(),
        s.rate,
        s.stats.p50,
        s.stats.p99,
        s.stats.p999,
    );
    if let Some(cpu) = s.cpu_per_exchange_us() {
        line.push_str(&format!("  proxy CPU {cpu:.0} µs/req"));
    }
    line.push_str(&format!("  upstream conns {}", s.upstream_connections));
    if s.errors > 0 {
        line.push_str(&format!("  {} errors", s.errors));
    }
    line
}

/// Waits (up to two minutes) until other processes leave the machine quiet: measured over 1 s
/// windows while this benchmark is idle.
async fn wait_for_quiet(max_busy: f64, progress: &mut impl FnMut(&str)) {
    if max_busy >= 1.0 {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut said = false;
    loop {
        let a = proc::machine_cpu();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = a
            .zip(proc::machine_cpu())
            .and_then(|(a, b)| proc::CpuTime::busy_between(a, b))
            .unwrap_or(0.0);
        if busy <= max_busy || Instant::now() > deadline {
            return;
        }
        if !said {
            progress(&format!(
                "  machine {:.0}% busy with other work: waiting for it to go quiet",
                busy * 100.0
            ));
            said = true;
        }
    }
}
