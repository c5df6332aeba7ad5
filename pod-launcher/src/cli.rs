//! Command line: flags → [`TaskSpec`] (exit 64 when invalid) → the command's module.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::AsyncWriteExt;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tollgate_policy::{Phase, Policy};

use crate::mounts::{self, MountError};
use crate::pending::{pending_work, serve};
use crate::registry::{Credentials, OciRegistry};
use crate::render::render;
use crate::spec::{self, Images, PolicySource, Registry, Resources, Scheme, SpecError, TaskSpec};
use crate::steer::{self, StatusView, WaitFor};
use crate::submit::{BuildMode, BuildWait, submit};

/// Exit code for bad flags or configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when `wait` times out (EX_TEMPFAIL).
pub const EXIT_TIMEOUT: u8 = 75;

/// tollgate-launch: renders, submits and steers tollgate task Pods.
///
/// The task's image is built first in its own build Pod (Kaniko without credentials, then a
/// crane push) unless the registry has it. The task Pod installs the redirect with tollgate-init,
/// runs the tollgate proxy as a native sidecar and the agent beside it, as a fixed non-root
/// UID/GID with every capability dropped. The phase label (agent → verification) drives the NetworkPolicies and the proxy.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Namespace of the task Pods.
    #[arg(
        long,
        short = 'n',
        env = "TOLLGATE_NAMESPACE",
        default_value = "tollgate-tasks",
        global = true
    )]
    pub namespace: String,

    /// The label whose value ("agent" or "verification") is the phase.
    #[arg(
        long,
        env = "TOLLGATE_PHASE_LABEL",
        default_value = "ridges.ai/phase",
        global = true
    )]
    pub phase_label: String,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the task's objects as YAML (build Pod, policy ConfigMap for --policy-file, task Pod); offline.
    Render {
        #[command(flatten)]
        task: TaskArgs,
        /// auto or always: print the build Pod (offline, so auto cannot ask the registry; `submit`
        /// leaves it out when the registry has the tag); never: leave it out.
        #[arg(long, value_enum, default_value = "auto")]
        build: BuildMode,
        /// Old spelling of `--build never`.
        #[arg(long, hide = true, conflicts_with = "build")]
        skip_build: bool,
    },
    /// Ask the registry whether the image exists, build it in a build Pod if not (and wait for
    /// it), then create the task; prints what it did as JSON.
    Submit {
        #[command(flatten)]
        task: TaskArgs,
        /// auto: build unless the registry has the tag; always; never.
        #[arg(long, value_enum, default_value = "auto")]
        build: BuildMode,
    },
    /// Set the phase label of a task Pod (the NetworkPolicy and the proxy follow it).
    Phase {
        /// Pod name.
        pod: String,
        /// agent or verification.
        phase: String,
    },
    /// Print a task Pod's state as JSON.
    Status {
        /// Pod name.
        pod: String,
    },
    /// Wait until a task Pod is Running or has completed (exit 75 on timeout, 1 if it failed).
    /// Once completed or failed, the proxy's decision-log head (from its termination message) is
    /// recorded as the Pod annotation tollgate.dev/decisions-head: the anchor for its run receipt.
    Wait {
        /// Pod name.
        pod: String,
        /// What to wait for.
        #[arg(long = "for", value_enum, default_value = "running")]
        what: WaitFor,
        /// How long to wait.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print a container's logs.
    Logs {
        /// Pod name.
        pod: String,
        /// agent, tollgate-proxy, tollgate-init; build or push (of a build Pod).
        #[arg(long, short = 'c', default_value = "agent")]
        container: String,
        /// Stream until the container ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<i64>,
    },
    /// Delete a task Pod (and the policy ConfigMap it owns).
    Delete {
        /// Pod name.
        pod: String,
    },
    /// Check Pod specs (YAML or JSON, several documents allowed, `-` for stdin) for any container
    /// but the proxy that could act as UID/GID 1337; exit 64 listing each one. Build Pods are
    /// skipped (they hold no proxy).
    CheckPod {
        /// The file, or `-`.
        file: PathBuf,
    },
    /// Print {"pending": N}: task Pods submitted and not yet Running.
    PendingWork,
    /// Serve GET /pending-work (KEDA metrics-api) and GET /healthz.
    Serve {
        /// Listen address.
        #[arg(long, env = "TOLLGATE_LAUNCH_LISTEN", default_value = "0.0.0.0:8080")]
        listen: String,
    },
}

/// Flags that describe one task (render and submit).
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Task id: repository name of the image and a label (lowercase, [a-z0-9] with . _ __ - separators).
    #[arg(long)]
    pub task: String,
    /// Run id: a label, and the proxy's EVALUATION_RUN_ID.
    #[arg(long)]
    pub run: String,
    /// URL of the task archive (e.g. an S3 presigned URL): a tar.gz with a Dockerfile at its root.
    #[arg(long)]
    pub archive_url: String,
    /// SHA-256 of the archive: the image tag is `sha256-<hex>`, so an unchanged task is built once.
    #[arg(long)]
    pub archive_sha256: String,
    /// Registry `host[:port]` Kaniko pushes to, the launcher asks and the kubelet pulls from.
    #[arg(
        long,
        env = "TOLLGATE_REGISTRY",
        default_value = "zot.tollgate-system.svc.cluster.local:5000"
    )]
    pub registry: String,
    /// http (the in-cluster Zot; Kaniko pushes with --insecure) or https.
    #[arg(long, env = "TOLLGATE_REGISTRY_SCHEME", default_value = "http", value_parser = ["http", "https"])]
    pub registry_scheme: String,
    /// Registry user for the manifest check.
    #[arg(long, env = "TOLLGATE_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,
    /// Registry password for the manifest check (prefer the env var).
    #[arg(long, env = "TOLLGATE_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,
    /// ConfigMap (key policy.toml) in the task namespace with the proxy's policy.
    #[arg(
        long,
        default_value = "tollgate-policy",
        conflicts_with = "policy_file"
    )]
    pub policy_configmap: String,
    /// A policy file, checked here and shipped as a ConfigMap owned by the Pod.
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// Budget in USD for the proxy's MAX_COST_USD: a plain decimal, up to 6 places, at most 1000000.
    #[arg(long)]
    pub budget_usd: Option<String>,
    /// Agent CPU (requests = limits), e.g. 2 or 500m.
    #[arg(long, default_value = "2")]
    pub cpu: String,
    /// Agent memory, e.g. 4Gi.
    #[arg(long, default_value = "4Gi")]
    pub memory: String,
    /// Agent ephemeral storage, e.g. 10Gi.
    #[arg(long)]
    pub ephemeral_storage: Option<String>,
    /// Kaniko CPU.
    #[arg(long, default_value = "2")]
    pub build_cpu: String,
    /// Kaniko memory.
    #[arg(long, default_value = "4Gi")]
    pub build_memory: String,
    /// Size limit of the build Pod's emptyDir holding the image tarball.
    #[arg(long, default_value = "20Gi")]
    pub build_storage: String,
    /// How long a build may take: the build Pod's activeDeadlineSeconds, and how long `submit`
    /// waits for it before giving up.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub build_timeout: Duration,
    /// The proxy image (Dockerfile target `proxy`).
    #[arg(
        long,
        env = "TOLLGATE_PROXY_IMAGE",
        default_value = "tollgate/proxy:dev"
    )]
    pub proxy_image: String,
    /// The init image (Dockerfile target `init`).
    #[arg(long, env = "TOLLGATE_INIT_IMAGE", default_value = "tollgate/init:dev")]
    pub init_image: String,
    /// The Kaniko executor image.
    #[arg(
        long,
        env = "TOLLGATE_KANIKO_IMAGE",
        default_value = "gcr.io/kaniko-project/executor:v1.23.2"
    )]
    pub kaniko_image: String,
    /// The image that pushes the build's tarball (crane; it alone sees the push secret).
    #[arg(
        long,
        env = "TOLLGATE_PUSH_IMAGE",
        default_value = "gcr.io/go-containerregistry/crane:v0.20.2"
    )]
    pub push_image: String,
    /// runAsUser for the agent, always set so the image's USER cannot choose it (0 and 1337, the
    /// proxy's, are refused).
    #[arg(long, env = "TOLLGATE_AGENT_UID", default_value_t = spec::DEFAULT_AGENT_ID, allow_negative_numbers = true)]
    pub agent_uid: i64,
    /// runAsGroup for the agent, always set (0 and 1337 are refused).
    #[arg(long, env = "TOLLGATE_AGENT_GID", default_value_t = spec::DEFAULT_AGENT_ID, allow_negative_numbers = true)]
    pub agent_gid: i64,
    /// imagePullSecret for the built image.
    #[arg(long, env = "TOLLGATE_PULL_SECRET")]
    pub pull_secret: Option<String>,
    /// Secret (type kubernetes.io/dockerconfigjson) the build Pod's push container pushes with
    /// (never mounted where the Dockerfile's RUN steps could read it).
    #[arg(long, env = "TOLLGATE_PUSH_SECRET")]
    pub push_secret: Option<String>,
    /// Secret whose keys become the proxy's env (e.g. OPENROUTER_MANAGEMENT_KEY).
    #[arg(long)]
    pub proxy_env_secret: Option<String>,
    /// KEY=VALUE for the proxy's env (RESTRICTED_MODELS, PROVIDER_ORDER, PROVIDER_ALLOW_FALLBACKS,
    /// OPENROUTER_WORKSPACE_ID, OPENROUTER_EXPECTED_API_KEY_SHA256, UPSTREAM_BASE_URL, RUST_LOG, ...);
    /// repeatable.
    #[arg(long = "proxy-env")]
    pub proxy_env: Vec<String>,
    /// NAME:MOUNTPATH: mount the Secret NAME (all its keys, as files) read-only at the directory
    /// MOUNTPATH in the proxy container only (e.g. for `[intercept] inject_key_file`); repeatable.
    #[arg(long = "proxy-secret", value_name = "NAME:MOUNTPATH")]
    pub proxy_secret: Vec<String>,
    /// LOCAL:MOUNTPATH: ship the local file in a Secret created beside the Pod (and deleted with
    /// it), mounted read-only as the file MOUNTPATH in the proxy container only (e.g. for
    /// `[intercept] extra_ca_file`); repeatable. Mount paths must be absolute, without `..`, and
    /// outside /etc/tollgate, /certs/output, /var/lib/tollgate, /etc/podinfo and /tmp.
    #[arg(long = "proxy-file", value_name = "LOCAL:MOUNTPATH")]
    pub proxy_file: Vec<String>,
}

/// Why flags could not become a [`TaskSpec`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The policy file could not be read.
    #[error("policy file {path}: {source}")]
    PolicyRead {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The policy file is not a valid tollgate policy.
    #[error("{0}")]
    Policy(#[from] tollgate_policy::PolicyError),
    /// The phase given to `phase`.
    #[error("phase {0:?}: expected agent or verification")]
    Phase(String),
    /// `check-pod` input that is not a readable YAML/JSON stream with a Pod in it.
    #[error("{path}: {reason}")]
    PodFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `--proxy-secret` or `--proxy-file`.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// `check-pod` found Pods that would let a container act as the proxy.
    #[error("{0}")]
    Refused(String),
}

impl TaskArgs {
    /// Checks every flag and builds the spec.
    pub fn spec(&self, namespace: &str, phase_label: &str) -> Result<TaskSpec, ConfigError> {
        let scheme = if self.registry_scheme == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let task = spec::TaskId::parse(&self.task)?;
        let digest = spec::Sha256Hex::parse(&self.archive_sha256)?;
        let registry = Registry::parse(&self.registry, scheme)?;
        if !(self.archive_url.starts_with("https://") || self.archive_url.starts_with("http://"))
            || self.archive_url.contains(char::is_whitespace)
        {
            return Err(SpecError::ArchiveUrl(self.archive_url.clone()).into());
        }
        let policy = match &self.policy_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::PolicyRead {
                        path: path.clone(),
                        source,
                    })?;
                Policy::parse(&text, &path.display().to_string())?;
                PolicySource::File { text }
            }
            None => PolicySource::ConfigMap(spec::dns_name(
                "--policy-configmap",
                &self.policy_configmap,
            )?),
        };
        let optional_name = |key, v: &Option<String>| -> Result<Option<String>, SpecError> {
            v.as_deref().map(|v| spec::dns_name(key, v)).transpose()
        };
        Ok(TaskSpec {
            namespace: spec::dns_name("--namespace", namespace)?,
            run: spec::RunId::parse(&self.run)?,
            archive_url: self.archive_url.clone(),
            image: spec::ImageRef {
                registry,
                repository: task.as_str().to_owned(),
                tag: digest.tag(),
            },
            task,
            policy,
            budget: self.budget_usd.as_deref().map(spec::budget).transpose()?,
            agent_resources: Resources {
                cpu: Some(spec::quantity("--cpu", &self.cpu)?),
                memory: Some(spec::quantity("--memory", &self.memory)?),
                ephemeral_storage: self
                    .ephemeral_storage
                    .as_deref()
                    .map(|q| spec::quantity("--ephemeral-storage", q))
                    .transpose()?,
            },
            build_resources: Resources {
                cpu: Some(spec::quantity("--build-cpu", &self.build_cpu)?),
                memory: Some(spec::quantity("--build-memory", &self.build_memory)?),
                ephemeral_storage: None,
            },
            build_storage: spec::quantity("--build-storage", &self.build_storage)?,
            build_timeout_secs: i64::try_from(self.build_timeout.as_secs().max(1))
                .unwrap_or(i64::MAX),
            images: Images {
                proxy: spec::image("--proxy-image", &self.proxy_image)?,
                init: spec::image("--init-image", &self.init_image)?,
                kaniko: spec::image("--kaniko-image", &self.kaniko_image)?,
                push: spec::image("--push-image", &self.push_image)?,
            },
            phase_label: spec::label_key(phase_label)?,
            agent_uid: spec::agent_id("uid", self.agent_uid)?,
            agent_gid: spec::agent_id("gid", self.agent_gid)?,
            pull_secret: optional_name("--pull-secret", &self.pull_secret)?,
            push_secret: optional_name("--push-secret", &self.push_secret)?,
            proxy_env_secret: optional_name("--proxy-env-secret", &self.proxy_env_secret)?,
            proxy_env: self
                .proxy_env
                .iter()
                .map(|kv| spec::proxy_env(kv))
                .collect::<Result<_, _>>()?,
            proxy_mounts: mounts::parse(&self.proxy_secret, &self.proxy_file)?,
        })
    }

    fn credentials(&self) -> Option<Credentials> {
        match (&self.registry_username, &self.registry_password) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.clone(),
                password: password.clone(),
            }),
            _ => None,
        }
    }
}

/// Parses the arguments and runs the command; the process's exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            // Printing help or an error to the terminal; nothing to do if that fails.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging();
    // kube and the registry client use rustls; this build carries only the ring provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate-launch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// Logs to stderr, coloured only on a terminal and without `NO_COLOR` (container logs are never
/// a terminal, and escape codes there are noise).
fn init_logging() {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// Runs one command.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("tollgate-launch: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Timeout(e)) => {
            eprintln!("tollgate-launch: {e}");
            ExitCode::from(EXIT_TIMEOUT)
        }
        Err(Failure::Other(e)) => {
            eprintln!("tollgate-launch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(ConfigError),
    Timeout(steer::WaitError),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Other(e.into())
    }
}

async fn pods(namespace: &str) -> Result<Api<Pod>, Failure> {
    let client = kube::Client::try_default().await?;
    Ok(Api::namespaced(client, namespace))
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `check-pod`: every Pod in the stream checked; a line per Pod that passes or is skipped.
fn check_pod_file(path: &std::path::Path) -> Result<String, ConfigError> {
    let bad = |reason: String| ConfigError::PodFile {
        path: path.to_owned(),
        reason,
    };
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| bad(e.to_string()))?;
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| bad(e.to_string()))?;
    let (mut passed, mut refused) = (Vec::new(), Vec::new());
    for doc in docs.into_iter().filter(|d| d["kind"] == "Pod") {
        let pod: Pod = serde_json::from_value(doc).map_err(|e| bad(format!("a Pod: {e}")))?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let is_build = pod
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(crate::render::BUILD_LABEL));
        if is_build {
            passed.push(format!("skipped: pod {name} (a build Pod: no proxy in it)"));
            continue;
        }
        match crate::admit::check(&pod) {
            Ok(()) => passed.push(format!("ok: pod {name}")),
            Err(e) => refused.push(e.to_string()),
        }
    }
    if passed.is_empty() && refused.is_empty() {
        return Err(bad("no Pod in it".to_owned()));
    }
    if refused.is_empty() {
        Ok(passed.join("\n"))
    } else {
        Err(ConfigError::Refused(refused.join("\n")))
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    let ns = cli.namespace.as_str();
    let label = cli.phase_label.as_str();
    match cli.command {
        Command::Render {
            task,
            build,
            skip_build,
        } => {
            let spec = task.spec(ns, label).map_err(Failure::Config)?;
            let build = if skip_build { BuildMode::Never } else { build };
            print!("{}", render(&spec, build.renders_build_pod()).to_yaml()?);
        }
        Command::Submit { task, build } => {
            let spec = task.spec(ns, label).map_err(Failure::Config)?;
            let client = kube::Client::try_default().await?;
            let index = OciRegistry::new(task.credentials(), Duration::from_secs(10));
            let wait = BuildWait {
                timeout: task.build_timeout,
                poll: Duration::from_secs(5),
            };
            print_json(&submit(client, &spec, &index, build, wait).await?)?;
        }
        Command::Phase { pod, phase } => {
            let phase = Phase::from_label(&phase)
                .ok_or_else(|| Failure::Config(ConfigError::Phase(phase.clone())))?;
            let api = pods(ns).await?;
            let now = steer::set_phase(&api, &pod, label, phase).await?;
            print_json(&serde_json::json!({ "pod": pod, "phase": now }))?;
        }
        Command::Status { pod } => {
            let api = pods(ns).await?;
            print_json(&StatusView::of(&api.get(&pod).await?, label))?;
        }
        Command::Wait { pod, what, timeout } => {
            let api = pods(ns).await?;
            let poll = Duration::from_secs(2);
            // A completed or failed task's run receipt is anchored outside the Pod's reach.
            match steer::wait_and_anchor(&api, &pod, what, timeout, poll).await {
                Ok(p) => print_json(&StatusView::of(&p, label))?,
                Err(e @ steer::WaitError::Timeout { .. }) => return Err(Failure::Timeout(e)),
                Err(e) => return Err(e.into()),
            }
        }
        Command::Logs {
            pod,
            container,
            follow,
            tail,
        } => {
            let api = pods(ns).await?;
            let params = steer::log_params(&container, follow, tail);
            let stream = api.log_stream(&pod, &params).await?;
            let mut stdout = tokio::io::stdout();
            tokio::io::copy(&mut stream.compat(), &mut stdout).await?;
            stdout.flush().await?;
        }
        Command::Delete { pod } => {
            steer::delete(&pods(ns).await?, &pod).await?;
            print_json(&serde_json::json!({ "deleted": pod }))?;
        }
        Command::CheckPod { file } => {
            let checked = check_pod_file(&file).map_err(Failure::Config)?;
            println!("{checked}");
        }
        Command::PendingWork => {
            println!(
                "{}",
                serde_json::to_string(&pending_work(&pods(ns).await?).await?)?
            );
        }
        Command::Serve { listen } => {
            let api = pods(ns).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            tracing::info!(listen = %listen, namespace = ns, "serving /pending-work");
            serve(listener, api, async {
                // Stop on SIGINT; SIGTERM ends the process as usual.
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
