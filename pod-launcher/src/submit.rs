//! Creates a task in the cluster: ask the registry whether the image exists, render, check the
//! task Pod ([`crate::admit`]), build the image in its own Pod when needed (create it, wait for
//! it to succeed, delete it), then create the policy ConfigMap (for `--policy-file`), the proxy
//! files Secret (for `--proxy-file`), the task Pod, and make the Pod own the ConfigMap and the
//! Secret so they are garbage-collected with it.
//!
//! The task Pod is created only once its image exists: a failed build leaves no task Pod stuck
//! pulling an image that will never come, and the failed build Pod stays for its logs.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Serialize;

use crate::FIELD_MANAGER;
use crate::admit::{self, Refused};
use crate::registry::{ImageIndex, RegistryError};
use crate::render::render;
use crate::spec::TaskSpec;
use crate::steer::{self, WaitError, WaitFor};

/// Whether to build the image with Kaniko.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BuildMode {
    /// Build unless the registry already has the tag (one HEAD request).
    Auto,
    /// Always build (the registry is not asked).
    Always,
    /// Never build: the image must exist (the registry is not asked).
    Never,
}

impl BuildMode {
    /// Whether `render` (offline: the registry is not asked) prints the build Pod.
    pub fn renders_build_pod(self) -> bool {
        self != BuildMode::Never
    }
}

/// What `submit` did; printed as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Submitted {
    /// Namespace of the Pod.
    pub namespace: String,
    /// Name of the Pod.
    pub pod: String,
    /// The agent's image.
    pub image: String,
    /// Whether the image was built first.
    pub build: bool,
    /// The build Pod (deleted once it succeeded), if there was a build.
    pub build_pod: Option<String>,
    /// The ConfigMap created for `--policy-file`, if any.
    pub policy_configmap: Option<String>,
    /// The Secret created for `--proxy-file`, if any (owned by the Pod, like the ConfigMap).
    pub proxy_files: Option<String>,
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The registry could not be asked.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The rendered task Pod would let a container act as the proxy (a launcher bug).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The build Pod failed or did not finish in time; no task Pod was created.
    #[error(
        "image build in pod {pod}: {source} (see `tollgate-launch logs {pod} -c build`; delete the pod to retry)"
    )]
    Build {
        /// The build Pod.
        pod: String,
        /// How the wait ended.
        #[source]
        source: WaitError,
    },
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> SubmitError {
    let action = action.into();
    move |source| SubmitError::Api { action, source }
}

/// How long to wait for a build Pod, and how often to look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildWait {
    /// The bound (also the build Pod's activeDeadlineSeconds).
    pub timeout: Duration,
    /// The interval between two reads of the build Pod.
    pub poll: Duration,
}

/// Submits the task; see the module doc for the requests made, in order.
pub async fn submit(
    client: Client,
    spec: &TaskSpec,
    index: &impl ImageIndex,
    mode: BuildMode,
    wait: BuildWait,
) -> Result<Submitted, SubmitError> {
    let build = match mode {
        BuildMode::Auto => !index.has_image(&spec.image).await?,
        BuildMode::Always => true,
        BuildMode::Never => false,
    };
    let rendered = render(spec, build);
    admit::check(&rendered.pod)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &spec.namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &spec.namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &spec.namespace);
    let post = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    let build_pod = match &rendered.build {
        Some(pod) => Some(run_build(&pods, &post, pod, wait).await?),
        None => None,
    };
    let policy_configmap = match &rendered.policy {
        Some(cm) => {
            let created = configmaps
                .create(&post, cm)
                .await
                .map_err(api_err("create policy configmap"))?;
            Some(created.metadata.name.unwrap_or_default())
        }
        None => None,
    };
    let proxy_files = match &rendered.files {
        Some(secret) => match secrets.create(&post, secret).await {
            Ok(created) => Some(created.metadata.name.unwrap_or_default()),
            Err(source) => {
                cleanup(&configmaps, policy_configmap.as_deref(), &secrets, None).await;
                return Err(SubmitError::Api {
                    action: "create proxy files secret".to_owned(),
                    source,
                });
            }
        },
        None => None,
    };
    let pod = match pods.create(&post, &rendered.pod).await {
        Ok(pod) => pod,
        Err(source) => {
            cleanup(
                &configmaps,
                policy_configmap.as_deref(),
                &secrets,
                proxy_files.as_deref(),
            )
            .await;
            return Err(SubmitError::Api {
                action: "create pod".to_owned(),
                source,
            });
        }
    };
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    if let Some(uid) = pod.metadata.uid.clone() {
        let owned = ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Pod".to_owned(),
                name: pod_name.clone(),
                uid,
                controller: None,
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        if let Some(name) = &policy_configmap {
            let patch = ConfigMap {
                metadata: owned.clone(),
                ..ConfigMap::default()
            };
            configmaps
                .patch(name, &params, &Patch::Merge(&patch))
                .await
                .map_err(api_err("make the pod own its policy configmap"))?;
        }
        if let Some(name) = &proxy_files {
            let patch = Secret {
                metadata: owned,
                ..Secret::default()
            };
            secrets
                .patch(name, &params, &Patch::Merge(&patch))
                .await
                .map_err(api_err("make the pod own its proxy files secret"))?;
        }
    }
    Ok(Submitted {
        namespace: spec.namespace.clone(),
        pod: pod_name,
        image: spec.image.to_string(),
        build,
        build_pod,
        policy_configmap,
        proxy_files,
    })
}

/// Best effort: do not leave an orphan behind the failure we report.
async fn cleanup(
    configmaps: &Api<ConfigMap>,
    configmap: Option<&str>,
    secrets: &Api<Secret>,
    secret: Option<&str>,
) {
    if let Some(name) = configmap
        && let Err(e) = configmaps.delete(name, &DeleteParams::default()).await
    {
        tracing::warn!(configmap = %name, error = %e, "could not delete the policy configmap");
    }
    if let Some(name) = secret
        && let Err(e) = secrets.delete(name, &DeleteParams::default()).await
    {
        tracing::warn!(secret = %name, error = %e, "could not delete the proxy files secret");
    }
}

/// Creates the build Pod (or joins one already building the same image), waits for it to
/// succeed, then deletes it; returns its name.
async fn run_build(
    pods: &Api<Pod>,
    post: &PostParams,
    pod: &Pod,
    wait: BuildWait,
) -> Result<String, SubmitError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    match pods.create(post, pod).await {
        Ok(_) => {}
        // The same archive submitted twice: one build serves both (the name is per image).
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(pod = %name, "a build of this image is already running; waiting for it");
        }
        Err(source) => {
            return Err(SubmitError::Api {
                action: "create build pod".to_owned(),
                source,
            });
        }
    }
    steer::wait(pods, &name, WaitFor::Completed, wait.timeout, wait.poll)
        .await
        .map_err(|source| SubmitError::Build {
            pod: name.clone(),
            source,
        })?;
    // Best effort: a leftover succeeded build Pod holds nothing and blocks nothing.
    if let Err(e) = steer::delete(pods, &name).await {
        tracing::warn!(pod = %name, error = %e, "could not delete the finished build pod");
    }
    Ok(name)
}
