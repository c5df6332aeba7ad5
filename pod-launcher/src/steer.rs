//! Steering a submitted task: flip its phase, read its status, wait for it, read its logs,
//! delete it. The phase is a label patch only: NetworkPolicy and the proxy (through the
//! downward-API labels file) both follow the label, so nothing execs into the Pod.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams};
use serde::Serialize;
use tollgate_policy::Phase;

use crate::FIELD_MANAGER;
use crate::admit::PROXY_CONTAINER;
use crate::render::IMAGE_ANNOTATION;

/// Sets the phase label; returns the value the API server now holds.
pub async fn set_phase(
    pods: &Api<Pod>,
    name: &str,
    label: &str,
    phase: Phase,
) -> Result<Option<String>, kube::Error> {
    // A typed partial Pod as a JSON merge patch: only metadata.labels[label] changes.
    let patch = Pod {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([(
                label.to_owned(),
                phase.as_str().to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let pod = pods.patch(name, &params, &Patch::Merge(&patch)).await?;
    Ok(pod.metadata.labels.and_then(|mut l| l.remove(label)))
}

/// The annotation `wait --for completed` sets to the proxy's decision-log head: the anchor a
/// run receipt is checked against (the agent cannot write Pod annotations nor the proxy's
/// termination message, where the head is read from).
pub const DECISIONS_HEAD_ANNOTATION: &str = "tollgate.dev/decisions-head";

/// The head of the proxy's hash-chained decision log, from the `decisions-head=<sha256 hex>`
/// line tollgate writes to its termination message at shutdown; `None` if it is absent or not
/// a SHA-256.
pub fn decisions_head(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let proxy = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|s| s.name == PROXY_CONTAINER)?;
    let message = proxy
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .as_deref()?;
    let head = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("decisions-head="))?;
    (head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit())).then(|| head.to_owned())
}

/// Records `head` as the Pod's [`DECISIONS_HEAD_ANNOTATION`] (a merge patch of that one key).
pub async fn record_decisions_head(
    pods: &Api<Pod>,
    name: &str,
    head: &str,
) -> Result<(), kube::Error> {
    let patch = Pod {
        metadata: ObjectMeta {
            annotations: Some(BTreeMap::from([(
                DECISIONS_HEAD_ANNOTATION.to_owned(),
                head.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    pods.patch(name, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// One container's state, for `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// `waiting`, `running` or `terminated`.
    pub state: &'static str,
    /// The waiting/terminated reason, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Exit code once terminated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Termination message (Kaniko writes the pushed digest there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ready flag.
    pub ready: bool,
    /// Restarts.
    pub restarts: i32,
}

/// What `status` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusView {
    /// Pod name.
    pub pod: String,
    /// Pod phase: Pending, Running, Succeeded, Failed, Unknown.
    pub pod_phase: String,
    /// The phase label's value (agent / verification).
    pub phase: Option<String>,
    /// The agent's image.
    pub image: Option<String>,
    /// Init containers (tollgate-init, tollgate-proxy; build) then containers (agent; push).
    pub containers: Vec<ContainerView>,
}

impl StatusView {
    /// Reads the parts of a Pod that matter for a task.
    pub fn of(pod: &Pod, phase_label: &str) -> StatusView {
        let status = pod.status.clone().unwrap_or_default();
        let views = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .map(container_view)
            .collect();
        StatusView {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            pod_phase: status.phase.unwrap_or_else(|| "Pending".to_owned()),
            phase: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(phase_label).cloned()),
            image: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(IMAGE_ANNOTATION).cloned()),
            containers: views,
        }
    }
}

fn container_view(s: &ContainerStatus) -> ContainerView {
    let mut view = ContainerView {
        name: s.name.clone(),
        state: "waiting",
        reason: None,
        exit_code: None,
        message: None,
        ready: s.ready,
        restarts: s.restart_count,
    };
    if let Some(state) = &s.state {
        if let Some(t) = &state.terminated {
            view.state = "terminated";
            view.reason = t.reason.clone();
            view.exit_code = Some(t.exit_code);
            view.message = t.message.clone().map(|m| m.trim().to_owned());
        } else if state.running.is_some() {
            view.state = "running";
        } else if let Some(w) = &state.waiting {
            view.reason = w.reason.clone();
        }
    }
    view
}

/// What `wait` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    /// The Pod is Running (the agent started: init and proxy are done or up).
    Running,
    /// The Pod has ended (Succeeded or Failed).
    Completed,
}

/// Why `wait` gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The bound passed.
    #[error("pod {pod}: still {pod_phase} after {timeout:?}")]
    Timeout {
        /// Pod name.
        pod: String,
        /// Last phase seen.
        pod_phase: String,
        /// The bound.
        timeout: Duration,
    },
    /// The Pod ended before it was Running, or failed.
    #[error("pod {pod}: {pod_phase}")]
    Failed {
        /// Pod name.
        pod: String,
        /// Its phase.
        pod_phase: String,
        /// The Pod as last read (a failed task ran too: its decision-log head is anchored).
        last: Box<Pod>,
    },
    /// The API failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Polls the Pod every `poll` until `what` holds or `timeout` passes.
pub async fn wait(
    pods: &Api<Pod>,
    name: &str,
    what: WaitFor,
    timeout: Duration,
    poll: Duration,
) -> Result<Pod, WaitError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pod = pods.get(name).await?;
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".to_owned());
        match (what, phase.as_str()) {
            (_, "Failed") => {
                return Err(WaitError::Failed {
                    pod: name.to_owned(),
                    pod_phase: phase,
                    last: Box::new(pod),
                });
            }
            (WaitFor::Running, "Running" | "Succeeded") | (WaitFor::Completed, "Succeeded") => {
                return Ok(pod);
            }
            _ => {}
        }
        if tokio::time::Instant::now() + poll > deadline {
            return Err(WaitError::Timeout {
                pod: name.to_owned(),
                pod_phase: phase,
                timeout,
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// [`wait`], then anchors the run receipt outside the Pod's reach: the proxy's decision-log
/// head is recorded as [`DECISIONS_HEAD_ANNOTATION`] once the task completed, and also when
/// the Pod failed (its task ran, and its evidence matters as much). The wait's own result is
/// returned unchanged; a failed annotation patch is returned as the API error it is.
pub async fn wait_and_anchor(
    pods: &Api<Pod>,
    name: &str,
    what: WaitFor,
    timeout: Duration,
    poll: Duration,
) -> Result<Pod, WaitError> {
    let waited = wait(pods, name, what, timeout, poll).await;
    let ended = match &waited {
        Ok(pod) if what == WaitFor::Completed => Some(pod),
        Err(WaitError::Failed { last, .. }) => Some(&**last),
        _ => None,
    };
    if let Some(head) = ended.and_then(decisions_head) {
        record_decisions_head(pods, name, &head).await?;
    }
    waited
}

/// Log parameters for one container.
pub fn log_params(container: &str, follow: bool, tail: Option<i64>) -> LogParams {
    LogParams {
        container: Some(container.to_owned()),
        follow,
        tail_lines: tail,
        ..LogParams::default()
    }
}

/// Deletes the Pod (its policy ConfigMap goes with it: the Pod owns it).
pub async fn delete(pods: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    pods.delete(name, &DeleteParams::default())
        .await
        .map(|_| ())
}
