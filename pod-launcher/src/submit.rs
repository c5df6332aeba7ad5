//! Creates a task in the cluster: ask the registry whether the image exists, render, then create
//! the policy ConfigMap (for `--policy-file`), the Pod, and make the Pod own the ConfigMap so it
//! is garbage-collected with it.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Serialize;

use crate::FIELD_MANAGER;
use crate::registry::{ImageIndex, RegistryError};
use crate::render::render;
use crate::spec::TaskSpec;

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

/// What `submit` did; printed as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Submitted {
    /// Namespace of the Pod.
    pub namespace: String,
    /// Name of the Pod.
    pub pod: String,
    /// The agent's image.
    pub image: String,
    /// Whether the Pod builds the image first.
    pub build: bool,
    /// The ConfigMap created for `--policy-file`, if any.
    pub policy_configmap: Option<String>,
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The registry could not be asked.
    #[error(transparent)]
    Registry(#[from] RegistryError),
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

/// Submits the task; see the module doc for the requests made, in order.
pub async fn submit(
    client: Client,
    spec: &TaskSpec,
    index: &impl ImageIndex,
    mode: BuildMode,
) -> Result<Submitted, SubmitError> {
    let build = match mode {
        BuildMode::Auto => !index.has_image(&spec.image).await?,
        BuildMode::Always => true,
        BuildMode::Never => false,
    };
    let rendered = render(spec, build);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &spec.namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(client, &spec.namespace);
    let post = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_owned()),
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
    let pod = match pods.create(&post, &rendered.pod).await {
        Ok(pod) => pod,
        Err(source) => {
            if let Some(name) = &policy_configmap {
                // Best effort: do not leave an orphan behind the failure we report.
                if let Err(e) = configmaps.delete(name, &DeleteParams::default()).await {
                    tracing::warn!(configmap = %name, error = %e, "could not delete the policy configmap");
                }
            }
            return Err(SubmitError::Api {
                action: "create pod".to_owned(),
                source,
            });
        }
    };
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    if let (Some(name), Some(uid)) = (&policy_configmap, pod.metadata.uid.clone()) {
        let owned = ConfigMap {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Pod".to_owned(),
                    name: pod_name.clone(),
                    uid,
                    controller: None,
                    block_owner_deletion: None,
                }]),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        configmaps
            .patch(name, &params, &Patch::Merge(&owned))
            .await
            .map_err(api_err("make the pod own its policy configmap"))?;
    }
    Ok(Submitted {
        namespace: spec.namespace.clone(),
        pod: pod_name,
        image: spec.image.to_string(),
        build,
        policy_configmap,
    })
}
