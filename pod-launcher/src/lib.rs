//! tollgate-launch: renders, submits and steers tollgate task Pods.
//!
//! Layout, in the order a task passes through it:
//!
//! ```text
//! cli → spec (TaskSpec) → render (build Pod, Pod, ConfigMap) → admit → registry (image present?) → submit
//!                                                            steer: phase | status | wait | logs | delete
//!                                                            pending: pending-work | serve
//! ```
//!
//! - `cli`: clap flags, turned into a `TaskSpec`; exit codes (64 bad flags, 75 wait timed out).
//! - `spec`: the validated inputs (ids, image reference, micro-USD budget via
//!   `tollgate_policy::money`, quantities).
//! - `mounts`: `--proxy-secret`/`--proxy-file`, extra files for the proxy container only.
//! - `render`: typed k8s-openapi objects; offline; golden-tested.
//! - `admit`: no container but the proxy can act as UID/GID 1337 (submit, `check-pod`).
//! - `registry`: `HEAD /v2/<name>/manifests/<tag>` to skip the Kaniko build of a known image.
//! - `submit`: build Pod (waited for, deleted), ConfigMap (for `--policy-file`), Pod, then the
//!   Pod made owner of the ConfigMap.
//! - `steer`: the phase label patch and the read/wait/log/delete verbs.
//! - `pending`: task Pods not yet Running, for KEDA's metrics-api scaler.
#![forbid(unsafe_code)]

pub mod admit;
pub mod cli;
pub mod mounts;
pub mod pending;
pub mod registry;
pub mod render;
pub mod spec;
pub mod steer;
pub mod submit;

/// The field manager the launcher's writes are recorded under.
pub const FIELD_MANAGER: &str = "tollgate-launch";
