//! The evidence subcommands (`verify-receipt`, `replay`, `suggest`) and the run's decision log:
//! opened at start, its receipt written at shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tollgate_policy::Policy;

use super::EXIT_CONFIG;
pub(crate) use crate::evidence::Recorder;
use crate::evidence::record::Start;
use crate::evidence::replay::Replay;
use crate::evidence::{receipt, suggest};
use crate::metrics::Metrics;

/// `tollgate verify-receipt DIR`.
pub fn verify_receipt(dir: &Path) -> ExitCode {
    match receipt::verify_dir(dir) {
        Ok(r) => {
            println!(
                "ok: {} records, head {}, run {:?}, {} connections, {} LLM requests, {} write failures",
                r.summary.records,
                r.summary.head,
                r.summary.run_id,
                r.summary.connections.total,
                r.summary.llm.requests,
                r.write_failures
            );
            if r.write_failures > 0 || r.dropped > 0 {
                println!(
                    "warning: the log is incomplete: {} records failed to write, {} were dropped at the size bound",
                    r.write_failures, r.dropped
                );
            }
            for start in r
                .summary
                .starts
                .iter()
                .filter_map(|s| s.broken_chain.as_ref())
            {
                println!("warning: a restart found a broken chain: {start}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("verify-receipt {}: FAILED: {error}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// `tollgate replay --policy NEW.toml FILES...`: exit 1 when anything is newly refused.
pub fn replay(policy: &Path, files: &[PathBuf], json: bool) -> ExitCode {
    let policy = match Policy::load(policy).and_then(|mut p| p.apply_process_env().map(|()| p)) {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut replay = Replay::default();
    for file in files {
        let result = std::fs::read_to_string(file)
            .map_err(|e| format!("{}: {e}", file.display()))
            .and_then(|text| {
                replay
                    .file(&file.display().to_string(), &text, &policy)
                    .map_err(|e| e.to_string())
            });
        if let Err(error) = result {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let report = replay.finish();
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render());
    }
    if report.newly_refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `tollgate suggest FILES...`: a minimal policy for what an observed run did.
pub fn suggest(files: &[PathBuf], collapse: bool) -> ExitCode {
    let mut observed = suggest::Observed::default();
    for file in files {
        let result = std::fs::read_to_string(file)
            .map_err(|e| format!("{}: {e}", file.display()))
            .and_then(|text| {
                observed
                    .file(&file.display().to_string(), &text)
                    .map_err(|e| e.to_string())
            });
        if let Err(error) = result {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    print!("{}", observed.policy(collapse));
    ExitCode::SUCCESS
}

/// Where the decision log goes: the flag, else the gateway's data dir when the gateway runs.
pub fn dir(flag: Option<&Path>, policy: &Policy) -> Option<PathBuf> {
    flag.map(Path::to_owned)
        .or_else(|| (!policy.intercept.is_empty()).then(|| policy.gateway.budget.data_dir.clone()))
}

/// Opens the decision log in `dir` and writes the start record.
pub fn open(
    dir: &Path,
    policy: &Policy,
    metrics: &Metrics,
    ports: &[SocketAddr],
    observe: bool,
    max_bytes: u64,
) -> anyhow::Result<Arc<Recorder>> {
    let configured = &policy.gateway.budget.evaluation_run_id;
    let run_id = if configured.is_empty() {
        random_run_id()
    } else {
        configured.clone()
    };
    let mut own_ports: Vec<u16> = ports
        .iter()
        .map(SocketAddr::port)
        .filter(|&p| p != 0)
        .collect();
    own_ports.sort_unstable();
    own_ports.dedup();
    let start = Start {
        run_id,
        commit: crate::COMMIT.to_owned(),
        version: crate::VERSION.to_owned(),
        budget_micros: policy.gateway.budget.max_cost_micros.map(|m| m.0),
        own_ports,
        broken_chain: None,
        truncated_bytes: 0,
        observe,
    };
    let recorder = Recorder::open(
        dir,
        start,
        max_bytes,
        metrics.evidence_records.clone(),
        &metrics.evidence_write_failures,
    )
    .with_context(|| format!("cannot open the decision log in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "decision log open");
    Ok(Arc::new(recorder))
}

/// Writes the receipt when dropped: at the end of the run, however it ends (shutdown before
/// every port was bound, or a gateway that failed to start, included).
pub struct ReceiptOnExit {
    /// The run's decision log.
    pub recorder: Arc<Recorder>,
    /// Where the head goes for the launcher.
    pub termination_log: PathBuf,
}

impl Drop for ReceiptOnExit {
    fn drop(&mut self) {
        finish(&self.recorder, &self.termination_log);
    }
}

/// At shutdown: writes `run_receipt.json`, and the chain's head to the container's termination
/// log (where the launcher reads it) when that file exists (kubelet creates it).
pub fn finish(recorder: &Recorder, termination_log: &Path) {
    match recorder.write_receipt() {
        Ok(receipt) => {
            let s = &receipt.summary;
            tracing::info!(head = %s.head, records = s.records, "run receipt written");
            if termination_log.exists() {
                let message = format!("decisions-head={}\nrecords={}\n", s.head, s.records);
                if let Err(error) = std::fs::write(termination_log, message) {
                    tracing::warn!(%error, path = %termination_log.display(), "cannot write the termination log");
                }
            }
        }
        Err(error) => tracing::error!(%error, "cannot write the run receipt"),
    }
}

fn random_run_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // Without randomness the run id is still unique enough for a genesis: the time.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = crate::evidence::recorder::now_ms().to_be_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("local-{hex}")
}
