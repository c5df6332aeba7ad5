//! The validated inputs of one task Pod: identifiers, image reference, budget, resources.
//!
//! The CLI hands raw strings to the parsers here; everything that leaves this module is known
//! to be a valid Kubernetes name, label value, OCI reference or quantity, so `render` can build
//! the Pod without checking anything again.

use std::fmt;

use tollgate_policy::money::{Micros, MoneyError};

/// Why a launcher input was refused (exit code 64).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A task id that is not a lowercase OCI repository component of at most 63 characters.
    #[error(
        "task id {0:?}: expected lowercase letters, digits and single '.', '_', '__' or '-' separators, at most 63 characters"
    )]
    TaskId(String),
    /// A run id that is not a Kubernetes label value.
    #[error(
        "run id {0:?}: expected letters, digits, '-', '_' or '.', starting and ending alphanumeric, at most 63 characters"
    )]
    RunId(String),
    /// Not 64 hexadecimal digits.
    #[error("archive sha256 {0:?}: expected 64 hexadecimal digits")]
    Sha256(String),
    /// A budget the proxy would refuse as `MAX_COST_USD`: the same grammar, checked here so a
    /// typo fails the launch instead of crash-looping the Pod.
    #[error("budget {value:?}: {reason}")]
    Budget {
        /// The value given.
        value: String,
        /// Why `tollgate_policy::money` refused it.
        reason: MoneyError,
    },
    /// A resource quantity Kubernetes would refuse.
    #[error("{key} {value:?}: expected a Kubernetes quantity such as 500m, 2, 1Gi")]
    Quantity {
        /// The flag the quantity came from.
        key: &'static str,
        /// The value given.
        value: String,
    },
    /// A registry that is not `host[:port]`.
    #[error("registry {0:?}: expected host[:port] without scheme or path")]
    Registry(String),
    /// A URL that is not http(s).
    #[error("archive url {0:?}: expected an https:// (or http://) URL")]
    ArchiveUrl(String),
    /// A Kubernetes object name (namespace, ConfigMap, Secret) that is not a DNS-1123 label.
    #[error(
        "{key} {value:?}: expected a DNS-1123 name (lowercase letters, digits, '-'), at most 63 characters"
    )]
    Name {
        /// The flag the name came from.
        key: &'static str,
        /// The value given.
        value: String,
    },
    /// A label key that Kubernetes would refuse.
    #[error("phase label {0:?}: expected a label key such as ridges.ai/phase")]
    LabelKey(String),
    /// The proxy's UID or GID given to the agent: it would escape the redirect.
    #[error("agent {what} 1337 is the proxy's and is exempt from the redirect; choose another")]
    ProxyIdentity {
        /// `uid` or `gid`.
        what: &'static str,
    },
    /// Root (or a negative id) for the agent: root can regain capabilities through setuid
    /// binaries or user namespaces far more easily than an unprivileged user.
    #[error("agent {what} {value}: the agent must run as a non-root id (1 or more, not 1337)")]
    RootIdentity {
        /// `uid` or `gid`.
        what: &'static str,
        /// The value given.
        value: i64,
    },
    /// An env override for the proxy that is not one it reads.
    #[error(
        "proxy env {0:?}: expected KEY=VALUE with KEY one of the proxy's variables (see --help)"
    )]
    ProxyEnv(String),
    /// An image reference with whitespace or nothing in it.
    #[error("{key} {value:?}: expected an image reference")]
    Image {
        /// The flag the image came from.
        key: &'static str,
        /// The value given.
        value: String,
    },
}

/// The proxy's UID and GID; the agent must never run as either.
pub const PROXY_ID: i64 = 1337;

/// A task id: a lowercase OCI repository component that is also a label value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskId(String);

impl TaskId {
    /// Checks `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, at most 63 characters.
    pub fn parse(s: &str) -> Result<TaskId, SpecError> {
        let err = || SpecError::TaskId(s.to_owned());
        if s.is_empty() || s.len() > 63 {
            return Err(err());
        }
        // Split on separators; every run of separators must be one of ".", "_", "__", "-+".
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut expect_alnum = true;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                expect_alnum = false;
                i += 1;
                continue;
            }
            if expect_alnum {
                return Err(err());
            }
            let start = i;
            while i < bytes.len() && matches!(bytes[i], b'.' | b'_' | b'-') {
                i += 1;
            }
            let sep = &s[start..i];
            let ok = !sep.is_empty() && sep == "."
                || sep == "_"
                || sep == "__"
                || sep.bytes().all(|b| b == b'-');
            if !ok {
                return Err(err());
            }
            expect_alnum = true;
        }
        if expect_alnum {
            return Err(err());
        }
        Ok(TaskId(s.to_owned()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A run id: any Kubernetes label value (UUIDs, dates, names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    /// Checks the label-value grammar, at most 63 characters, not empty.
    pub fn parse(s: &str) -> Result<RunId, SpecError> {
        if is_label_value(s) && !s.is_empty() {
            Ok(RunId(s.to_owned()))
        } else {
            Err(SpecError::RunId(s.to_owned()))
        }
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters (empty allowed).
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Checks a DNS-1123 label given for `key`.
pub fn dns_name(key: &'static str, s: &str) -> Result<String, SpecError> {
    if is_dns_label(s) {
        Ok(s.to_owned())
    } else {
        Err(SpecError::Name {
            key,
            value: s.to_owned(),
        })
    }
}

/// A label key: optional DNS-subdomain prefix and `/`, then a name part like a label value.
pub fn label_key(s: &str) -> Result<String, SpecError> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(is_dns_label));
    if prefix_ok && !name.is_empty() && is_label_value(name) {
        Ok(s.to_owned())
    } else {
        Err(SpecError::LabelKey(s.to_owned()))
    }
}

/// The archive's SHA-256, lowercase hex; it becomes the image tag `sha256-<hex>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Checks 64 hex digits (either case; stored lowercase).
    pub fn parse(s: &str) -> Result<Sha256Hex, SpecError> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256Hex(s.to_ascii_lowercase()))
        } else {
            Err(SpecError::Sha256(s.to_owned()))
        }
    }

    /// The image tag for this archive: `sha256-<hex>` (a tag cannot contain ':').
    pub fn tag(&self) -> String {
        format!("sha256-{}", self.0)
    }
}

/// A budget for the proxy's `MAX_COST_USD`, read as the proxy reads it (an operator's amount:
/// a plain decimal, exact to the micro-USD, at most 1000000 USD); its `Display` is what the
/// proxy reads back.
pub fn budget(s: &str) -> Result<Micros, SpecError> {
    Micros::parse_usd(s).map_err(|reason| SpecError::Budget {
        value: s.to_owned(),
        reason,
    })
}

/// Checks a Kubernetes quantity: a decimal number and an optional suffix.
pub fn quantity(key: &'static str, s: &str) -> Result<String, SpecError> {
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num_ok =
        !num.is_empty() && num.matches('.').count() <= 1 && num.bytes().any(|b| b.is_ascii_digit());
    if num_ok && SUFFIXES.contains(&suffix) {
        Ok(s.to_owned())
    } else {
        Err(SpecError::Quantity {
            key,
            value: s.to_owned(),
        })
    }
}

/// Requests (= limits) for one container; each is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU, e.g. `2` or `500m`.
    pub cpu: Option<String>,
    /// Memory, e.g. `4Gi`.
    pub memory: Option<String>,
    /// Ephemeral storage, e.g. `10Gi`.
    pub ephemeral_storage: Option<String>,
}

/// How the launcher reaches the registry for its manifest check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (the in-cluster Zot of `k8s/`); Kaniko pushes with `--insecure`.
    Http,
    /// HTTPS with the system roots.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A registry host and port, e.g. `zot.tollgate-system.svc.cluster.local:5000`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    /// `host[:port]`, as it appears in image references.
    pub host: String,
    /// How to talk to it.
    pub scheme: Scheme,
}

impl Registry {
    /// Checks `host[:port]`: no scheme, no path, no whitespace.
    pub fn parse(s: &str, scheme: Scheme) -> Result<Registry, SpecError> {
        let err = || SpecError::Registry(s.to_owned());
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
            _ => (s, None),
        };
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
            });
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if host_ok && port_ok {
            Ok(Registry {
                host: s.to_owned(),
                scheme,
            })
        } else {
            Err(err())
        }
    }
}

/// `<registry>/<task>:sha256-<archive digest>`: what Kaniko pushes and the agent runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Where the image lives.
    pub registry: Registry,
    /// The repository: the task id.
    pub repository: String,
    /// The tag: derived from the archive's digest.
    pub tag: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry.host, self.repository, self.tag)
    }
}

/// Checks an image reference given on the command line (light: non-empty, no whitespace).
pub fn image(key: &'static str, s: &str) -> Result<String, SpecError> {
    if !s.is_empty() && !s.contains(char::is_whitespace) {
        Ok(s.to_owned())
    } else {
        Err(SpecError::Image {
            key,
            value: s.to_owned(),
        })
    }
}

/// Where the proxy's policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// An existing ConfigMap (key `policy.toml`) in the task namespace.
    ConfigMap(String),
    /// A local file, checked with tollgate-policy and shipped as a ConfigMap owned by the Pod.
    File {
        /// The policy TOML as read.
        text: String,
    },
}

/// Environment variables the proxy reads, which `--proxy-env` may set.
pub const PROXY_ENV_KEYS: [&str; 14] = [
    "RESTRICTED_MODELS",
    "PROVIDER_ORDER",
    "PROVIDER_ALLOW_FALLBACKS",
    "OPENROUTER_WORKSPACE_ID",
    "OPENROUTER_EXPECTED_API_KEY_SHA256",
    "UPSTREAM_BASE_URL",
    "RUST_LOG",
    "TOLLGATE_HELLO_TIMEOUT",
    "TOLLGATE_MAX_CONNECTIONS",
    "TOLLGATE_DRAIN_TIMEOUT",
    "TOLLGATE_UNLOCK_FILE",
    // Secrets belong in --proxy-env-secret; these two are accepted for kind/dev setups.
    "OPENROUTER_MANAGEMENT_KEY",
    "MAX_COST_USD",
    "EVALUATION_RUN_ID",
];

/// Parses `KEY=VALUE` for the proxy's environment.
pub fn proxy_env(s: &str) -> Result<(String, String), SpecError> {
    match s.split_once('=') {
        Some((k, v)) if PROXY_ENV_KEYS.contains(&k) => Ok((k.to_owned(), v.to_owned())),
        _ => Err(SpecError::ProxyEnv(s.to_owned())),
    }
}

/// The container images of a task Pod (the agent's is built).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// `tollgate` (Dockerfile target `proxy`).
    pub proxy: String,
    /// `tollgate-init` (Dockerfile target `init`).
    pub init: String,
    /// The Kaniko executor.
    pub kaniko: String,
    /// The pusher of the build Pod: crane (`crane push TARBALL REF`).
    pub push: String,
}

/// Everything needed to render one task Pod; every field is already valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    /// Namespace of the Pod.
    pub namespace: String,
    /// Task id (repository name and label).
    pub task: TaskId,
    /// Run id (label, and the proxy's EVALUATION_RUN_ID).
    pub run: RunId,
    /// Presigned URL of the task archive (a tar.gz with a Dockerfile at its root).
    pub archive_url: String,
    /// The image Kaniko pushes and the agent runs.
    pub image: ImageRef,
    /// The policy.
    pub policy: PolicySource,
    /// Budget for MAX_COST_USD; None leaves the policy's.
    pub budget: Option<Micros>,
    /// The agent container's resources.
    pub agent_resources: Resources,
    /// The Kaniko container's resources.
    pub build_resources: Resources,
    /// Size limit of the build Pod's emptyDir that holds the image tarball.
    pub build_storage: String,
    /// How long a build may take: the build Pod's activeDeadlineSeconds and submit's wait.
    pub build_timeout_secs: i64,
    /// Container images.
    pub images: Images,
    /// The phase label key (default `ridges.ai/phase`).
    pub phase_label: String,
    /// runAsUser for the agent: always set (the image's USER is never trusted), never 0 or 1337.
    pub agent_uid: i64,
    /// runAsGroup for the agent: always set, never 0 or 1337.
    pub agent_gid: i64,
    /// imagePullSecret for the built image, if the registry needs one.
    pub pull_secret: Option<String>,
    /// Secret with a `.dockerconfigjson` Kaniko pushes with, if the registry needs one.
    pub push_secret: Option<String>,
    /// Secret whose keys become the proxy's env (OPENROUTER_MANAGEMENT_KEY, ...).
    pub proxy_env_secret: Option<String>,
    /// Extra plain env for the proxy, from `--proxy-env`.
    pub proxy_env: Vec<(String, String)>,
    /// Extra files for the proxy only, from `--proxy-secret` and `--proxy-file`.
    pub proxy_mounts: Vec<crate::mounts::ProxyMount>,
}

impl TaskSpec {
    /// The Pod's name: `task-<task>-<run>` in DNS-1123 form, shortened with a hash past 63.
    pub fn pod_name(&self) -> String {
        let raw = format!("task-{}-{}", self.task.as_str(), self.run.as_str());
        let mut name = dns_label_from(&raw);
        if name.len() > 63 {
            // Keep it unique: 54 characters of the name, '-', 8 hex digits of a hash of all of it.
            let hash = fnv1a(raw.as_bytes());
            name.truncate(54);
            name = format!("{}-{hash:08x}", name.trim_end_matches('-'));
        }
        name
    }

    /// The build Pod's name: `build-<task>-<first 12 hex of the archive digest>`, one per image,
    /// so two submits of the same archive share one build.
    pub fn build_pod_name(&self) -> String {
        let digest = self.image.tag.trim_start_matches("sha256-");
        let short = digest.get(..12).unwrap_or(digest);
        let mut name = dns_label_from(&format!("build-{}", self.task.as_str()));
        if name.len() > 63 - 13 {
            let hash = fnv1a(self.task.as_str().as_bytes());
            name.truncate(63 - 13 - 9);
            name = format!("{}-{hash:08x}", name.trim_end_matches('-'));
        }
        format!("{name}-{short}")
    }

    /// The ConfigMap that carries a `--policy-file` policy.
    pub fn policy_configmap_name(&self) -> String {
        match &self.policy {
            PolicySource::ConfigMap(name) => name.clone(),
            PolicySource::File { .. } => {
                let mut pod = self.pod_name();
                pod.truncate(56);
                format!("{}-policy", pod.trim_end_matches('-'))
            }
        }
    }
}

/// `raw` with every character a DNS-1123 label cannot hold turned into '-', lowercased.
fn dns_label_from(raw: &str) -> String {
    raw.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// FNV-1a, 32 bits: a stable short hash for shortened names (not for security).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The agent's UID and GID when no flag says otherwise (non-root, not the proxy's).
pub const DEFAULT_AGENT_ID: i64 = 1000;

/// Refuses the proxy's UID/GID and root (or a negative id) for the agent.
pub fn agent_id(what: &'static str, id: i64) -> Result<i64, SpecError> {
    match id {
        PROXY_ID => Err(SpecError::ProxyIdentity { what }),
        id if id < 1 => Err(SpecError::RootIdentity { what, value: id }),
        id => Ok(id),
    }
}

#[cfg(test)]
mod tests;
