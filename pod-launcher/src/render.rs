//! A [`TaskSpec`] rendered into typed Kubernetes objects: the build Pod (when the image must be
//! built), the task Pod and, for a `--policy-file`, the ConfigMap that carries the policy.
//! Offline: nothing here talks to a cluster or a registry.
//!
//! The build Pod (its own Pod, so the untrusted build context never shares a network namespace
//! or a credential with anything; `tollgate.dev/build: "true"` selects its NetworkPolicy):
//! 1. `build` (init): Kaniko builds the archive's Dockerfile into a tarball (`--no-push`). It has
//!    no registry credential: `RUN` steps execute in Kaniko's own container and could read
//!    anything mounted there.
//! 2. `push`: once Kaniko has exited, a crane container (non-root, read-only) that alone mounts
//!    the push secret pushes the tarball as `<registry>/<task>:sha256-<archive digest>`.
//!
//! The task Pod, in start order:
//! 1. `tollgate-init` (init): root with NET_ADMIN and NET_RAW only; installs the redirect.
//! 2. `tollgate-proxy` (native sidecar: init container with `restartPolicy: Always`): UID/GID
//!    1337; the agent starts once its startup probe on `/readyz` passes (the CA is written then).
//! 3. `agent`: the built image as a fixed non-root UID/GID (never the image's `USER`), every
//!    capability dropped, no privilege escalation: it cannot become UID 1337.
//!
//! `--proxy-secret` Secrets and the `--proxy-file` Secret (created beside the policy ConfigMap)
//! are mounted read-only into `tollgate-proxy` and no other container.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    ExecAction, HTTPGetAction, KeyToPath, LocalObjectReference, ObjectFieldSelector, Pod,
    PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretEnvSource, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::mounts::ProxyMount;
use crate::spec::{PROXY_ID, PolicySource, Resources, Scheme, TaskSpec};

/// Label every launcher-made object carries; `pending-work` selects on it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tollgate-launch");
/// Label with the task id.
pub const TASK_LABEL: &str = "tollgate.dev/task";
/// Label with the run id.
pub const RUN_LABEL: &str = "tollgate.dev/run";
/// Label of build Pods; the build-egress NetworkPolicy and the registry's ingress key on it.
pub const BUILD_LABEL: &str = "tollgate.dev/build";
/// Where Kaniko writes the image tarball and the push container reads it.
pub const BUILD_OUTPUT_DIR: &str = "/output";
/// The image tarball in [`BUILD_OUTPUT_DIR`].
pub const BUILD_TARBALL: &str = "/output/image.tar";
/// Where the push container (only) finds the registry credential (`config.json`).
pub const PUSH_DOCKER_CONFIG: &str = "/docker-config";
/// The push container's UID/GID (distroless `nonroot`).
pub const PUSH_ID: i64 = 65532;
/// Annotation with the agent's image reference.
pub const IMAGE_ANNOTATION: &str = "tollgate.dev/image";
/// Key of the policy in its ConfigMap, and the file name under [`POLICY_DIR`].
pub const POLICY_KEY: &str = "policy.toml";
/// Where the policy ConfigMap is mounted (the directory, so ConfigMap updates hot-reload).
pub const POLICY_DIR: &str = "/etc/tollgate";
/// Where the proxy writes `ca.crt`, `ridges-ca.crt` and `ca-bundle.crt`.
pub const CERTS_DIR: &str = "/certs/output";
/// The bundle the agent trusts.
pub const CA_BUNDLE: &str = "/certs/output/ca-bundle.crt";
/// The downward-API directory with the Pod's `labels`.
pub const PODINFO_DIR: &str = "/etc/podinfo";
/// The proxy's data dir (usage ledger).
pub const DATA_DIR: &str = "/var/lib/tollgate";
/// The proxy's own /tmp (the egress-unlocked sentinel).
pub const PROXY_TMP_DIR: &str = "/tmp";
/// Volume of the Secret the launcher creates for `--proxy-file`.
pub const PROXY_FILES_VOLUME: &str = "proxy-files";
/// The proxy's SNI port.
pub const SNI_PORT: i32 = 15443;
/// The proxy's original-destination (capture) port.
pub const CAPTURE_PORT: i32 = 15001;
/// The proxy's read-only usage port.
pub const USAGE_PORT: i32 = 8080;
/// The proxy's admin port (/metrics /healthz /readyz).
pub const ADMIN_PORT: i32 = 15090;
/// Env vars that point TLS stacks at the CA bundle: OpenSSL/Python, requests, curl, Node, git.
pub const CA_ENV: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];

/// The objects of one task: the build Pod when the image must be built, an optional policy
/// ConfigMap (for `--policy-file`) and the task Pod.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The build Pod; `submit` creates it and waits for it to succeed before the rest.
    pub build: Option<Pod>,
    /// The policy ConfigMap, when the policy came from a file.
    pub policy: Option<ConfigMap>,
    /// The Secret with the `--proxy-file` files, mounted into the proxy only.
    pub files: Option<Secret>,
    /// The task Pod.
    pub pod: Pod,
}

impl Rendered {
    /// The objects as a multi-document YAML stream: the build Pod, then the ConfigMap (before the
    /// Pod that mounts it), then the task Pod.
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        let mut out = String::new();
        if let Some(build) = &self.build {
            out.push_str(&to_yaml(build)?);
            out.push_str("---\n");
        }
        if let Some(cm) = &self.policy {
            out.push_str(&to_yaml(cm)?);
            out.push_str("---\n");
        }
        if let Some(secret) = &self.files {
            out.push_str(&to_yaml(secret)?);
            out.push_str("---\n");
        }
        out.push_str(&to_yaml(&self.pod)?);
        Ok(out)
    }
}

/// YAML with long one-line strings (image references, URLs) kept on one line, multi-line
/// strings (the policy) as literal blocks.
pub fn to_yaml(value: &impl serde::Serialize) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string_with_options(
        value,
        serde_saphyr::ser_options! { folded_wrap_chars: 100_000 },
    )
}

/// Renders the task; `build` says whether the image must be built (the registry lacks the tag).
pub fn render(spec: &TaskSpec, build: bool) -> Rendered {
    let policy = match &spec.policy {
        PolicySource::ConfigMap(_) => None,
        PolicySource::File { text } => Some(ConfigMap {
            metadata: ObjectMeta {
                name: Some(spec.policy_configmap_name()),
                namespace: Some(spec.namespace.clone()),
                labels: Some(task_labels(spec)),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(POLICY_KEY.to_owned(), text.clone())])),
            ..ConfigMap::default()
        }),
    };
    Rendered {
        build: build.then(|| build_pod(spec)),
        policy,
        files: files_secret(spec),
        pod: pod(spec),
    }
}

/// The name of the Secret that carries the `--proxy-file` files: `<pod>-proxy-files`.
pub fn proxy_files_secret_name(spec: &TaskSpec) -> String {
    let mut pod = spec.pod_name();
    pod.truncate(51);
    format!("{}-proxy-files", pod.trim_end_matches('-'))
}

/// The key of the `i`th `--proxy-file` in its Secret.
fn proxy_file_key(i: usize) -> String {
    format!("file-{i}")
}

fn files_secret(spec: &TaskSpec) -> Option<Secret> {
    let data: BTreeMap<String, ByteString> = spec
        .proxy_mounts
        .iter()
        .filter_map(|m| match m {
            ProxyMount::File { content, .. } => Some(ByteString(content.clone())),
            ProxyMount::Secret { .. } => None,
        })
        .enumerate()
        .map(|(i, content)| (proxy_file_key(i), content))
        .collect();
    (!data.is_empty()).then(|| Secret {
        metadata: ObjectMeta {
            name: Some(proxy_files_secret_name(spec)),
            namespace: Some(spec.namespace.clone()),
            labels: Some(task_labels(spec)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        immutable: Some(true),
        data: Some(data),
        ..Secret::default()
    })
}

/// The proxy's volumes and mounts for `--proxy-secret` and `--proxy-file`, all read-only.
fn proxy_extra_mounts(spec: &TaskSpec) -> (Vec<Volume>, Vec<VolumeMount>) {
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    let mut files = 0;
    for (i, m) in spec.proxy_mounts.iter().enumerate() {
        match m {
            ProxyMount::Secret { name, path } => {
                let volume = format!("proxy-secret-{i}");
                volumes.push(Volume {
                    name: volume.clone(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(name.clone()),
                        optional: Some(false),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                });
                mounts.push(mount(&volume, path, true));
            }
            ProxyMount::File { path, .. } => {
                mounts.push(VolumeMount {
                    sub_path: Some(proxy_file_key(files)),
                    ..mount(PROXY_FILES_VOLUME, path, true)
                });
                files += 1;
            }
        }
    }
    if files > 0 {
        volumes.push(Volume {
            name: PROXY_FILES_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(proxy_files_secret_name(spec)),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    (volumes, mounts)
}

/// Labels shared by the Pod and its ConfigMap (the phase label is the Pod's alone).
fn task_labels(spec: &TaskSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (TASK_LABEL.to_owned(), spec.task.as_str().to_owned()),
        (RUN_LABEL.to_owned(), spec.run.as_str().to_owned()),
    ])
}

fn pod(spec: &TaskSpec) -> Pod {
    let mut labels = task_labels(spec);
    labels.insert(spec.phase_label.clone(), "agent".to_owned());
    let init_containers = vec![tollgate_init(spec), proxy(spec)];
    let image_pull_secrets = spec
        .pull_secret
        .as_ref()
        .map(|name| vec![LocalObjectReference { name: name.clone() }]);
    Pod {
        metadata: ObjectMeta {
            name: Some(spec.pod_name()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (IMAGE_ANNOTATION.to_owned(), spec.image.to_string()),
                (
                    "kubectl.kubernetes.io/default-container".to_owned(),
                    "agent".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            // The agent gets no API credentials, no service env vars, no host namespaces.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(30),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            image_pull_secrets,
            init_containers: Some(init_containers),
            containers: vec![agent(spec)],
            volumes: Some(volumes(spec)),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The build Pod: Kaniko (no credentials) builds a tarball, then `push` (the credentials, and
/// nothing the build context controls but the tarball) pushes it.
fn build_pod(spec: &TaskSpec) -> Pod {
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (TASK_LABEL.to_owned(), spec.task.as_str().to_owned()),
        (BUILD_LABEL.to_owned(), "true".to_owned()),
    ]);
    let mut volumes = vec![empty_dir("image", &spec.build_storage)];
    if let Some(secret) = &spec.push_secret {
        volumes.push(Volume {
            name: "registry-auth".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![KeyToPath {
                    key: ".dockerconfigjson".to_owned(),
                    path: "config.json".to_owned(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(spec.build_pod_name()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (IMAGE_ANNOTATION.to_owned(), spec.image.to_string()),
                (
                    "kubectl.kubernetes.io/default-container".to_owned(),
                    "build".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            // The kubelet stops a build that outlives the launcher's wait for it.
            active_deadline_seconds: Some(spec.build_timeout_secs),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            share_process_namespace: Some(false),
            termination_grace_period_seconds: Some(10),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            init_containers: Some(vec![kaniko(spec)]),
            containers: vec![push(spec)],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn kaniko(spec: &TaskSpec) -> Container {
    let args = vec![
        format!("--context={}", spec.archive_url),
        "--dockerfile=Dockerfile".to_owned(),
        // Names the image inside the tarball; nothing is pushed from here.
        format!("--destination={}", spec.image),
        "--no-push".to_owned(),
        format!("--tar-path={BUILD_TARBALL}"),
        // The digest lands in the container's termination message, for `status`.
        "--digest-file=/dev/termination-log".to_owned(),
        "--single-snapshot".to_owned(),
    ];
    Container {
        name: "build".to_owned(),
        image: Some(spec.images.kaniko.clone()),
        args: Some(args),
        // No DOCKER_CONFIG and no secret: RUN steps run in this container's filesystem and
        // would read any credential mounted here.
        volume_mounts: Some(vec![mount("image", BUILD_OUTPUT_DIR, false)]),
        resources: resources(&spec.build_resources),
        // Kaniko must be root to unpack base images into its own filesystem; it gets no more
        // than the runtime's default capabilities, less NET_RAW (a RUN step has no use for raw
        // sockets, which would let it spoof ARP/IP on the node's Pod network), and cannot
        // escalate.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_user: Some(0),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["NET_RAW".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// crane pushes the tarball Kaniko left. It starts after Kaniko exited (an init container ends
/// before any container starts), in its own filesystem: the secret is mounted here only.
fn push(spec: &TaskSpec) -> Container {
    let mut args = vec!["push".to_owned()];
    if spec.image.registry.scheme == Scheme::Http {
        args.push("--insecure".to_owned());
    }
    args.push(BUILD_TARBALL.to_owned());
    args.push(spec.image.to_string());
    let mut env = Vec::new();
    let mut volume_mounts = vec![mount("image", BUILD_OUTPUT_DIR, true)];
    if spec.push_secret.is_some() {
        env.push(env_var("DOCKER_CONFIG", PUSH_DOCKER_CONFIG));
        volume_mounts.push(mount("registry-auth", PUSH_DOCKER_CONFIG, true));
    }
    Container {
        name: "push".to_owned(),
        image: Some(spec.images.push.clone()),
        args: Some(args),
        env: non_empty(env),
        volume_mounts: Some(volume_mounts),
        resources: resources(&Resources {
            cpu: Some("500m".to_owned()),
            memory: Some("256Mi".to_owned()),
            ephemeral_storage: None,
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(PUSH_ID),
            run_as_group: Some(PUSH_ID),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn tollgate_init(spec: &TaskSpec) -> Container {
    Container {
        name: "tollgate-init".to_owned(),
        image: Some(spec.images.init.clone()),
        args: Some(vec![
            format!("--proxy-uid={PROXY_ID}"),
            format!("--sni-port={SNI_PORT}"),
            format!("--capture-port={CAPTURE_PORT}"),
        ]),
        resources: resources(&Resources {
            cpu: Some("100m".to_owned()),
            memory: Some("64Mi".to_owned()),
            ephemeral_storage: None,
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        // iptables takes its lock in /run; the root filesystem stays read-only.
        volume_mounts: Some(vec![mount("init-run", "/run", false)]),
        ..Container::default()
    }
}

fn proxy(spec: &TaskSpec) -> Container {
    let mut env = vec![
        env_var("TOLLGATE_POLICY", &format!("{POLICY_DIR}/{POLICY_KEY}")),
        env_var("TOLLGATE_LOG_FORMAT", "json"),
        env_var("TOLLGATE_ADMIN_LISTEN", &format!("0.0.0.0:{ADMIN_PORT}")),
        env_var("TOLLGATE_LABELS_FILE", &format!("{PODINFO_DIR}/labels")),
        env_var("TOLLGATE_PHASE_LABEL", &spec.phase_label),
        env_var("PROXY_DATA_DIR", DATA_DIR),
        env_var("EVALUATION_RUN_ID", spec.run.as_str()),
    ];
    if let Some(budget) = spec.budget {
        env.push(env_var("MAX_COST_USD", &budget.to_string()));
    }
    for (key, value) in &spec.proxy_env {
        match env.iter_mut().find(|e| &e.name == key) {
            Some(existing) => existing.value = Some(value.clone()),
            None => env.push(env_var(key, value)),
        }
    }
    let env_from = spec.proxy_env_secret.as_ref().map(|name| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: name.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]
    });
    let mut volume_mounts = vec![
        mount("podinfo", PODINFO_DIR, true),
        mount("policy", POLICY_DIR, true),
        mount("certs", CERTS_DIR, false),
        mount("proxy-data", DATA_DIR, false),
        // The sentinel /tmp/egress-unlocked lives here: the proxy's own, not the agent's.
        mount("proxy-tmp", PROXY_TMP_DIR, false),
    ];
    // Key files and extra CAs: the proxy's alone (never the agent's, init's or a build's).
    volume_mounts.extend(proxy_extra_mounts(spec).1);
    Container {
        name: "tollgate-proxy".to_owned(),
        image: Some(spec.images.proxy.clone()),
        // Native sidecar: starts before the agent, runs beside it, stops after it.
        restart_policy: Some("Always".to_owned()),
        env: Some(env),
        env_from,
        ports: Some(vec![
            port("sni", SNI_PORT),
            port("capture", CAPTURE_PORT),
            port("usage", USAGE_PORT),
            port("admin", ADMIN_PORT),
        ]),
        // Readiness through `tollgate probe` (exec): an HTTP probe would also accept an agent
        // that squatted the admin port while the sidecar restarted; the exec probe checks a
        // proof only this container's tollgate can give. Liveness stays HTTP: a tollgate that
        // waits out a squatted port is alive, and restarting it would not free the port.
        startup_probe: Some(exec_probe(1, 60)),
        readiness_probe: Some(exec_probe(5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: resources(&Resources {
            cpu: Some("500m".to_owned()),
            memory: Some("256Mi".to_owned()),
            ephemeral_storage: None,
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_ID),
            run_as_group: Some(PROXY_ID),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    }
}

fn agent(spec: &TaskSpec) -> Container {
    Container {
        name: "agent".to_owned(),
        image: Some(spec.image.to_string()),
        env: Some(CA_ENV.iter().map(|k| env_var(k, CA_BUNDLE)).collect()),
        resources: resources(&spec.agent_resources),
        // The image's USER is never trusted: `USER 1000:1337` or `USER 1337` would make it the
        // proxy. Every capability goes (SETUID would let it become 1337, NET_ADMIN/NET_RAW undo or
        // bypass the rules) and cannot come back through setuid or file-capability binaries.
        security_context: Some(SecurityContext {
            run_as_user: Some(spec.agent_uid),
            run_as_group: Some(spec.agent_gid),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![mount("certs", CERTS_DIR, true)]),
        ..Container::default()
    }
}

fn volumes(spec: &TaskSpec) -> Vec<Volume> {
    vec![
        Volume {
            name: "podinfo".to_owned(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".to_owned(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".to_owned(),
                        api_version: None,
                    }),
                    ..DownwardAPIVolumeFile::default()
                }]),
                ..DownwardAPIVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "policy".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: spec.policy_configmap_name(),
                items: Some(vec![KeyToPath {
                    key: POLICY_KEY.to_owned(),
                    path: POLICY_KEY.to_owned(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("certs", "1Mi"),
        empty_dir("proxy-data", "64Mi"),
        empty_dir("proxy-tmp", "1Mi"),
        empty_dir("init-run", "1Mi"),
    ]
    .into_iter()
    .chain(proxy_extra_mounts(spec).0)
    .collect()
}

fn empty_dir(name: &str, size: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size.to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// `tollgate probe`: GET /readyz with a challenge answered by a key in the sidecar's own `/tmp`.
fn exec_probe(period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "/usr/local/bin/tollgate".to_owned(),
                "probe".to_owned(),
                format!("--admin=127.0.0.1:{ADMIN_PORT}"),
            ]),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Requests equal to limits (Guaranteed-style), for the quantities given.
fn resources(r: &Resources) -> Option<ResourceRequirements> {
    let map: BTreeMap<String, Quantity> = [
        ("cpu", &r.cpu),
        ("memory", &r.memory),
        ("ephemeral-storage", &r.ephemeral_storage),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), Quantity(v.clone()))))
    .collect();
    (!map.is_empty()).then(|| ResourceRequirements {
        limits: Some(map.clone()),
        requests: Some(map),
        ..ResourceRequirements::default()
    })
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}
