//! tollgate-bench: tollgate against a direct connection and HAProxy, on one machine, in one run.
//!
//! Layout (one run, top to bottom):
//!
//! ```text
//! pki → origin → targets { direct | tollgate | tollgate-nolog | tollgate-1t | haproxy | haproxy-1t | candidate }
//!              → rounds × scenarios × targets (interleaved) → load::measure → report
//! ```
//!
//! Only the target being measured runs: the other proxies are paused (SIGSTOP), so whatever one
//! does when idle cannot take CPU from another. A sample during which other processes kept the
//! machine busy is measured again once the machine is quiet.
//!
//! - [`pki`]: a throwaway CA and the `bench.test` certificate; rustls configs on ring.
//! - [`origin`]: the local TLS server, minimal HTTP/1.1 keep-alive: `GET /1m`, `GET /small`.
//! - [`target`]: what clients dial: the origin, or tollgate / HAProxy as child processes.
//! - [`load`]: the load generator: three scenarios, each a warm-up then a timed window.
//! - [`proc`]: CPU time of the proxies and the machine, and the machine's description.
//! - [`report`]: medians, spreads, ratios and CPU costs as Markdown tables.

#![forbid(unsafe_code)]

pub mod load;
pub mod origin;
pub mod pki;
pub mod proc;
pub mod report;
pub mod target;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::{Load, Scenario};
use crate::report::Report;
use crate::target::{HaproxySettings, Kind, Target};

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Warm-up, window and connection counts.
    pub load: Load,
    /// Rounds; each scenario × target is measured once per round, and the median reported.
    pub rounds: usize,
    /// Scenarios to run, in order.
    pub scenarios: Vec<Scenario>,
    /// Targets to measure, in order.
    pub targets: Vec<Kind>,
    /// The tollgate binary.
    pub tollgate_bin: PathBuf,
    /// The HAProxy binary; `None` skips HAProxy.
    pub haproxy_bin: Option<PathBuf>,
    /// Another tollgate build to measure as [`Kind::Candidate`]; `None` skips it.
    pub candidate_bin: Option<PathBuf>,
    /// Extra flags for the candidate (e.g. `--worker-threads 1` to A/B a setting).
    pub candidate_args: Vec<String>,
    /// Every tollgate writes its hash-chained decision log, as the sidecar does when its
    /// gateway runs (binaries without `--evidence-dir` run without).
    pub evidence: bool,
    /// HAProxy tuning.
    pub haproxy: HaproxySettings,
    /// A sample taken while other processes kept more than this share of the machine busy
    /// (0–1) is measured again, up to [`Config::noisy_retries`] times.
    pub max_other_load: f64,
    /// How often a noisy sample is measured again before it is kept anyway.
    pub noisy_retries: u32,
    /// How long each proxy's CPU use is watched with no traffic, before the rounds.
    pub idle_window: Duration,
}

/// Runs the benchmark; `progress` gets one line per measurement.
pub async fn run(config: &Config, mut progress: impl FnMut(&str)) -> Result<Report> {
    let load_before = proc::load_average();
    let pki = pki::Pki::generate().context("generating certificates")?;
    let origin = origin::start(pki.server.clone())
        .await
        .context("starting the origin")?;
    let mut notes = Vec::new();
    if config.evidence {
        notes.push(
            "every tollgate writes its hash-chained decision log (--evidence-dir), as the sidecar does when its gateway runs; --no-evidence turns it off".to_owned(),
        );
    }
    let targets = start_targets(config, origin.addr, &mut notes, &mut progress).await?;

    // Only the target being measured runs; the other proxies are paused.
    for target in &targets {
        target.pause(true)?;
    }
    for target in targets.iter().filter(|t| t.pid().is_some()) {
        target.pause(false)?;
        let idle = idle_cpu(target, config.idle_window).await;
        target.pause(true)?;
        let name = target.kind.name();
        notes.push(format!("{name}: {:.1}% of a core when idle", idle * 100.0));
    }

    let mut samples: BTreeMap<(Scenario, Kind), Vec<load::Sample>> = BTreeMap::new();
    let mut retried = 0;
    for round in 1..=config.rounds {
        for &scenario in &config.scenarios {
            // Targets back to back within a scenario, so drift hits them alike.
            for target in &targets {
                let (sample, retries) =
                    measure_quietly(config, &pki, target, scenario, &mut progress).await?;
                retried += retries;
                progress(&format!(
                    "round {round}/{rounds} {scenario:<10} {target:<14} {rate:>10.1} {unit}, errors {errors}",
                    rounds = config.rounds,
                    scenario = scenario.name(),
                    target = target.kind.name(),
                    rate = sample.rate,
                    unit = scenario.unit(),
                    errors = sample.errors,
                ));
                samples
                    .entry((scenario, target.kind))
                    .or_default()
                    .push(sample);
            }
        }
    }

    if retried > 0 {
        notes.push(format!(
            "{retried} measurement(s) repeated: other processes kept over {:.0}% of the machine busy",
            config.max_other_load * 100.0
        ));
    }
    log_notes(&targets, &mut notes);
    let versions = versions(config);
    drop(targets);
    Ok(Report {
        machine: proc::Machine::read(),
        load_before,
        load_after: proc::load_average(),
        versions,
        config: config.clone(),
        samples,
        notes,
    })
}

/// Starts every configured target that can run here; skipped ones get a note.
async fn start_targets(
    config: &Config,
    origin: SocketAddr,
    notes: &mut Vec<String>,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for &kind in &config.targets {
        let is_haproxy = kind.is_haproxy();
        let bin = match kind {
            Kind::Direct => {
                targets.push(Target::direct(origin));
                continue;
            }
            Kind::Tollgate | Kind::TollgateNoLog | Kind::Tollgate1T => Some(&config.tollgate_bin),
            Kind::Candidate => config.candidate_bin.as_ref(),
            Kind::Haproxy | Kind::Haproxy1T | Kind::Haproxy1TLog => config.haproxy_bin.as_ref(),
        };
        let Some(bin) = bin else {
            // No candidate is the normal case; no HAProxy is worth saying.
            if is_haproxy {
                let note = format!("{}: haproxy not found on PATH, skipped", kind.name());
                progress(&note);
                notes.push(note);
            }
            continue;
        };
        let target = if is_haproxy {
            Target::haproxy(bin, origin, config.haproxy, kind).await
        } else {
            let extra = match kind {
                Kind::Tollgate1T => vec!["--worker-threads".to_owned(), "1".to_owned()],
                Kind::Candidate => config.candidate_args.clone(),
                _ => Vec::new(),
            };
            Target::tollgate_with_options(bin, origin, kind, &extra, config.evidence).await
        };
        targets.push(target.with_context(|| format!("starting {}", bin.display()))?);
    }
    Ok(targets)
}

/// Measures one sample with `target` resumed; a sample spoilt by other processes' load is
/// measured again once the machine is quiet. Returns the sample and how often it was repeated.
async fn measure_quietly(
    config: &Config,
    pki: &pki::Pki,
    target: &Target,
    scenario: Scenario,
    progress: &mut impl FnMut(&str),
) -> Result<(load::Sample, u32)> {
    let measure = || {
        let client = pki.client.clone();
        load::measure(scenario, target.addr, client, config.load, target.pid())
    };
    target.pause(false)?;
    let mut sample = measure().await;
    let mut tries = 0;
    while let Some(other) = sample.other_busy.filter(|o| *o > config.max_other_load) {
        if tries == config.noisy_retries {
            break;
        }
        tries += 1;
        progress(&format!(
            "  {:.0}% of the machine busy with other work: waiting for quiet, then measuring again",
            other * 100.0
        ));
        target.pause(true)?;
        wait_for_quiet(config.max_other_load, QUIET_WAIT).await;
        target.pause(false)?;
        sample = measure().await;
    }
    target.pause(true)?;
    Ok((sample, tries))
}

/// Notes how much each tollgate logged, to show the per-connection line was really on (or off).
fn log_notes(targets: &[Target], notes: &mut Vec<String>) {
    let tollgates = targets.iter().filter(|t| {
        matches!(
            t.kind,
            Kind::Tollgate | Kind::TollgateNoLog | Kind::Tollgate1T | Kind::Candidate
        )
    });
    for target in tollgates {
        if let Some((lines, bytes)) = target.log_path().and_then(target::connection_lines) {
            notes.push(format!(
                "{}: wrote {lines} per-connection log lines, {bytes} bytes of log in all",
                target.kind.name()
            ));
        }
    }
}

/// Longest wait for a quiet machine before a noisy sample is measured again regardless.
const QUIET_WAIT: Duration = Duration::from_secs(120);

/// Waits (up to `max_wait`) until the machine is less than `threshold` busy over one second.
/// Called with every proxy paused and no load running, so whatever is busy is someone else.
async fn wait_for_quiet(threshold: f64, max_wait: Duration) {
    let deadline = tokio::time::Instant::now() + max_wait;
    while tokio::time::Instant::now() < deadline {
        let before = proc::machine_cpu();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = before
            .zip(proc::machine_cpu())
            .and_then(|(a, b)| proc::CpuTime::busy_between(a, b));
        if busy.is_none_or(|b| b < threshold) {
            return;
        }
    }
}

/// Share of one core the proxy uses with no traffic, over `window`.
async fn idle_cpu(target: &Target, window: Duration) -> f64 {
    // Let it finish whatever the previous pause interrupted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = target.pid();
    let before = pid.and_then(proc::process_cpu);
    tokio::time::sleep(window).await;
    let after = pid.and_then(proc::process_cpu);
    let used = before.zip(after).map(|(a, b)| b.saturating_sub(a));
    used.map_or(0.0, |d| d.as_secs_f64() / window.as_secs_f64())
}

fn versions(config: &Config) -> Vec<(String, String)> {
    let mut v = vec![(
        "tollgate".to_owned(),
        target::version(&config.tollgate_bin, "--version"),
    )];
    if let Some(bin) = &config.haproxy_bin {
        v.push(("haproxy".to_owned(), target::version(bin, "-v")));
    }
    if let Some(bin) = &config.candidate_bin {
        let version = target::version(bin, "--version");
        v.push((
            "candidate".to_owned(),
            format!("{version} ({})", bin.display()),
        ));
    }
    v
}

impl Config {
    /// The defaults: 5 s windows after 1 s of warm-up, 3 rounds, 64 keep-alive connections,
    /// 16 new connections in flight, every scenario and target.
    pub fn new(tollgate_bin: PathBuf, haproxy_bin: Option<PathBuf>) -> Config {
        Config {
            load: Load {
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(5),
                connections: 64,
                new_conn_concurrency: 16,
            },
            rounds: 3,
            scenarios: Scenario::ALL.to_vec(),
            targets: Kind::ALL.to_vec(),
            tollgate_bin,
            haproxy_bin,
            candidate_bin: None,
            candidate_args: Vec::new(),
            evidence: true,
            haproxy: HaproxySettings {
                nbthread: 2,
                splice: false,
                maxconn: 4096,
                log: false,
            },
            max_other_load: 0.10,
            noisy_retries: 3,
            idle_window: Duration::from_secs(1),
        }
    }
}
