//! The Pod's phase (`agent` or `verification`), from the first source that has one:
//! 1. the downward-API labels file (kubelet rewrites it when the Pod's label changes),
//! 2. the sentinel file (present = verification; kept for the Python sidecar's operators),
//! 3. the policy's `phase`.
//!
//! All three are local files: nothing reachable over the network can change the phase. The files
//! are polled (a few hundred bytes every 200 ms), which survives kubelet's symlink swaps and
//! directories that appear late, and keeps a change visible to new connections within 1 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tollgate_policy::{Phase, Policy};

use crate::evidence::Recorder;
use crate::metrics::Metrics;

/// How often the phase sources are read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Where the phase comes from (paths and label key are configurable).
#[derive(Clone, Debug)]
pub struct Sources {
    /// Downward-API labels file, lines of `key="value"`.
    pub labels_file: PathBuf,
    /// The label that carries the phase.
    pub label_key: String,
    /// Sentinel file; its presence means verification.
    pub unlock_file: PathBuf,
}

/// Which source decided the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The Pod label, through the downward API.
    Label,
    /// The sentinel file.
    Sentinel,
    /// The policy's default.
    Policy,
}

impl Source {
    /// The source as a log field and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Label => "label",
            Source::Sentinel => "sentinel",
            Source::Policy => "policy",
        }
    }
}

/// Reads the sources once and returns the phase and which source decided it.
pub fn resolve(sources: &Sources, policy_phase: Phase) -> (Phase, Source) {
    // Plain std::fs: the files are tiny and local, and a blocking-pool hop would cost more.
    if let Ok(text) = std::fs::read_to_string(&sources.labels_file)
        && let Some(value) = label_value(&text, &sources.label_key)
    {
        // An unreadable value fails closed to the restrictive phase.
        return (
            Phase::from_label(&value).unwrap_or(Phase::Agent),
            Source::Label,
        );
    }
    if sources.unlock_file.exists() {
        return (Phase::Verification, Source::Sentinel);
    }
    (policy_phase, Source::Policy)
}

/// Finds `key` in a downward-API labels file (`key="value"` lines, values Go-quoted).
pub fn label_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| unquote(v.trim()))
    })
}

fn unquote(v: &str) -> String {
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The current phase, shared by every connection; written only by [`watch`].
#[derive(Debug)]
pub struct State {
    current: AtomicU8,
}

impl State {
    /// Starts in `phase`.
    pub fn new(phase: Phase) -> Self {
        Self {
            current: AtomicU8::new(encode(phase)),
        }
    }

    /// The phase new connections are decided in.
    pub fn get(&self) -> Phase {
        match self.current.load(Ordering::Acquire) {
            1 => Phase::Verification,
            _ => Phase::Agent,
        }
    }

    fn set(&self, phase: Phase) {
        self.current.store(encode(phase), Ordering::Release);
    }
}

fn encode(phase: Phase) -> u8 {
    match phase {
        Phase::Agent => 0,
        Phase::Verification => 1,
    }
}

/// Publishes `phase` in the phase gauge.
pub fn export(metrics: &Metrics, phase: Phase) {
    for p in [Phase::Agent, Phase::Verification] {
        metrics
            .phase
            .with_label_values(&[p.as_str()])
            .set(i64::from(p == phase));
    }
}

/// Polls the sources until `shutdown`, publishing each transition (logged and counted).
pub async fn watch(
    sources: Sources,
    state: Arc<State>,
    policy: Arc<ArcSwap<Policy>>,
    metrics: Metrics,
    evidence: Option<Arc<Recorder>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (phase, source) = resolve(&sources, policy.load().phase);
        let previous = state.get();
        if phase != previous {
            state.set(phase);
            export(&metrics, phase);
            metrics
                .phase_transitions
                .with_label_values(&[phase.as_str(), source.as_str()])
                .inc();
            tracing::info!(
                from = previous.as_str(),
                to = phase.as_str(),
                source = source.as_str(),
                "phase changed"
            );
            if let Some(evidence) = &evidence {
                evidence.phase(Some(previous.as_str()), phase.as_str(), source.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sources(dir: &tempfile::TempDir) -> Sources {
        Sources {
            labels_file: dir.path().join("labels"),
            label_key: "ridges.ai/phase".into(),
            unlock_file: dir.path().join("egress-unlocked"),
        }
    }

    #[test]
    fn reads_downward_api_labels() {
        let text = "app=\"task\"\nridges.ai/phase=\"verification\"\nridges.ai/run=\"a\\\"b\"\n";
        assert_eq!(
            label_value(text, "ridges.ai/phase").as_deref(),
            Some("verification")
        );
        assert_eq!(label_value(text, "ridges.ai/run").as_deref(), Some("a\"b"));
        assert_eq!(label_value(text, "missing"), None);
    }

    #[test]
    fn precedence_is_label_then_sentinel_then_policy() {
        let dir = tempfile::tempdir().unwrap();
        let s = sources(&dir);
        assert_eq!(resolve(&s, Phase::Agent), (Phase::Agent, Source::Policy));
        assert_eq!(
            resolve(&s, Phase::Verification),
            (Phase::Verification, Source::Policy)
        );
        std::fs::write(&s.unlock_file, "").unwrap();
        assert_eq!(
            resolve(&s, Phase::Agent),
            (Phase::Verification, Source::Sentinel)
        );
        std::fs::write(&s.labels_file, "ridges.ai/phase=\"agent\"\n").unwrap();
        assert_eq!(
            resolve(&s, Phase::Verification),
            (Phase::Agent, Source::Label)
        );
        std::fs::write(&s.labels_file, "other=\"x\"\n").unwrap();
        assert_eq!(
            resolve(&s, Phase::Agent),
            (Phase::Verification, Source::Sentinel)
        );
    }

    #[test]
    fn an_unreadable_label_value_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let s = sources(&dir);
        std::fs::write(&s.unlock_file, "").unwrap();
        std::fs::write(&s.labels_file, "ridges.ai/phase=\"open-sesame\"\n").unwrap();
        assert_eq!(
            resolve(&s, Phase::Verification),
            (Phase::Agent, Source::Label)
        );
    }
}
