//! Hot reload of the policy file.
//!
//! The file's directory is watched (inotify through notify), because a ConfigMap mount replaces
//! the file by swapping a `..data` symlink in that directory, not by writing the file. A 1 s poll
//! backs the watcher up (events can be lost, or the directory can be replaced). Each new version
//! is parsed and compiled aside and swapped in atomically; connections already open keep the
//! policy they started with. A bad file keeps the last good policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tollgate_policy::Policy;

use crate::evidence::Recorder;
use crate::metrics::Metrics;

/// The backstop poll interval; the watcher normally reacts within milliseconds.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Quiet time after a change before reading: an editor's truncate-then-write would otherwise be
/// read half-written and reported as a bad policy.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches `path` until `shutdown`, swapping each good version into `current`.
///
/// `loaded` is the text `current` was compiled from, so an unchanged file is not reloaded.
pub async fn watch(
    path: PathBuf,
    loaded: Vec<u8>,
    current: Arc<ArcSwap<Policy>>,
    metrics: Metrics,
    evidence: Option<Arc<Recorder>>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    // Kept alive for the whole loop: dropping the watcher stops the events.
    let _watcher = start_watcher(&path, tx);
    let mut last = loaded;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = rx.recv() => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let Ok(bytes) = tokio::fs::read(&path).await else {
            // Mid-swap or briefly absent: the next event or tick reads it again.
            continue;
        };
        if bytes == last {
            continue;
        }
        if reload(&path, &bytes, &current, &metrics)
            && let Some(evidence) = &evidence
        {
            evidence.policy(&bytes, &path.display().to_string());
        }
        // Remember bad versions too, so one bad file is reported once, not every second.
        last = bytes;
    }
}

/// Compiles `bytes` and swaps it in (true), or keeps the current policy and reports why.
fn reload(path: &Path, bytes: &[u8], current: &ArcSwap<Policy>, metrics: &Metrics) -> bool {
    let origin = path.display().to_string();
    let parsed = std::str::from_utf8(bytes)
        .map_err(|e| format!("{origin}: policy is not UTF-8: {e}"))
        .and_then(|text| {
            let mut policy = Policy::parse(text, &origin).map_err(|e| e.to_string())?;
            // The environment is re-applied: it overrides every version of the file.
            policy.apply_process_env().map_err(|e| e.to_string())?;
            Ok(policy)
        });
    match parsed {
        Ok(policy) => {
            warn_start_only(&current.load().gateway, &policy.gateway);
            let summary = policy.summary();
            current.store(Arc::new(policy));
            metrics.policy_reloads.with_label_values(&["ok"]).inc();
            tracing::info!(policy = %origin, %summary, "policy reloaded");
            true
        }
        Err(error) => {
            metrics.policy_reloads.with_label_values(&["error"]).inc();
            tracing::error!(policy = %origin, %error, "policy reload failed; keeping the last good policy");
            false
        }
    }
}

/// Settings the gateway reads once, at start: a reload that changes them says so instead of
/// pretending to apply them.
fn warn_start_only(old: &tollgate_policy::GatewaySettings, new: &tollgate_policy::GatewaySettings) {
    let changed: Vec<&str> = [
        (
            "intercept.budget.max_cost_usd",
            old.budget.max_cost_micros != new.budget.max_cost_micros,
        ),
        (
            "intercept.budget.data_dir",
            old.budget.data_dir != new.budget.data_dir,
        ),
        (
            "intercept.budget.evaluation_run_id",
            old.budget.evaluation_run_id != new.budget.evaluation_run_id,
        ),
        ("intercept.tls", old.tls != new.tls),
        ("intercept.auth.inject", old.auth.inject != new.auth.inject),
        ("intercept.limits", old.limits != new.limits),
        (
            "intercept.extra_ca_file",
            old.extra_ca_file != new.extra_ca_file,
        ),
        (
            "intercept.connect_timeout",
            old.connect_timeout != new.connect_timeout,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect();
    if !changed.is_empty() {
        tracing::warn!(keys = ?changed, "these policy keys take effect at the next restart");
    }
}

fn start_watcher(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads of the file show up as access events: waking on them would make the
        // loop re-read the file forever.
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // A full channel already holds a wake-up; one is enough.
            let _ = tx.try_send(());
        }
    });
    match watcher {
        Ok(mut w) => match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch the policy directory; polling only");
                None
            }
        },
        Err(error) => {
            tracing::warn!(%error, "cannot start the file watcher; polling only");
            None
        }
    }
}
