//! The LLM gateway's settings, compiled from `[intercept]` and its sub-tables (everything but
//! `hosts`) and then adjusted by the reference's environment variables (`env`). Secrets are never
//! held here, only where to read them ([`KeySource`]): `Policy` is logged in summaries.

mod endpoint;
mod models;
pub(crate) mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::money::{Micros, UnitPrice};

pub use endpoint::{Endpoint, EndpointSet};
pub use models::{AliasKind, ModelDenied, ModelPattern, ModelPolicy};

/// Default `max_body`: 10 MiB, as the reference.
pub const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;
/// The largest `max_body` accepted: request bodies are held in memory while they are checked.
pub const MAX_MAX_BODY: usize = 1024 * 1024 * 1024;

/// Where the gateway forwards: `https://<host>[:<port>]<path_prefix>`, always TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The host name, normalised (also the TLS server name; `[hosts]` pins apply to it).
    pub host: String,
    /// The port (443 unless the URL says otherwise).
    pub port: u16,
    /// Prepended to each request path; empty, or starting with `/` and not ending with one.
    pub path_prefix: String,
}

impl Upstream {
    /// The host, with the port when it is not 443 (the `Host` / `:authority` to send).
    pub fn authority(&self) -> String {
        if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The upstream URL for a request path such as `/api/v1/chat/completions`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!(
            "https://{}{}{path_and_query}",
            self.authority(),
            self.path_prefix
        )
    }
}

impl Default for Upstream {
    /// `https://openrouter.ai`.
    fn default() -> Self {
        Upstream {
            host: "openrouter.ai".to_owned(),
            port: 443,
            path_prefix: String::new(),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.path_prefix)
    }
}

/// `[intercept.tls]`: the certificate authority the gateway signs leaf certificates with, and
/// where the agent's trust files are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// A CA to load; `None` generates a per-Pod CA at start (key only in memory).
    pub ca: Option<CaFiles>,
    /// Where `ca.crt`, `ridges-ca.crt` and `ca-bundle.crt` are written (default `/certs/output`).
    pub output_dir: PathBuf,
    /// The system roots bundled with the CA into `ca-bundle.crt`
    /// (default `/etc/ssl/certs/ca-certificates.crt`).
    pub system_roots: PathBuf,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            ca: None,
            output_dir: PathBuf::from("/certs/output"),
            system_roots: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        }
    }
}

/// A CA certificate and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Where the proxy reads a secret from; the secret itself never enters the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable of the proxy's process, by name.
    Env(String),
    /// A file (e.g. a mounted Kubernetes secret); surrounding whitespace is not part of the key.
    File(PathBuf),
}

impl fmt::Display for KeySource {
    /// `env NAME` or `file /path`: safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(name) => write!(f, "env {name}"),
            KeySource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// `[intercept.auth]`: what the agent's `Authorization` must be, and whether the gateway swaps in
/// its own key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// When set, the SHA-256 of the bearer token must equal this (else 403).
    pub api_key_sha256: Option<[u8; 32]>,
    /// When set, the gateway replaces the agent's bearer token with the key read from here.
    pub inject: Option<KeySource>,
}

/// `[intercept.provider]`: the provider preferences the gateway forces on every request (the
/// agent's own `provider` object is replaced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSettings {
    /// Providers to try first, in order; empty lets OpenRouter choose.
    pub order: Vec<String>,
    /// Whether other providers may serve the request when those in `order` cannot (default true).
    pub allow_fallbacks: bool,
    /// Overrides for one model id (lowercased key); unset fields inherit the ones above.
    pub per_model: BTreeMap<String, ProviderOverride>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            order: Vec::new(),
            allow_fallbacks: true,
            per_model: BTreeMap::new(),
        }
    }
}

/// `[intercept.provider.models."<id>"]`: a model's own provider preferences.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderOverride {
    /// Replaces the table's `order` for this model.
    pub order: Option<Vec<String>>,
    /// Replaces the table's `allow_fallbacks` for this model.
    pub allow_fallbacks: Option<bool>,
}

/// The provider preferences for one request, ready to be written as OpenRouter's `provider`
/// object together with `"zdr": true` ([`ProviderPrefs::ZDR`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderPrefs {
    /// `provider.order`; omit the key when empty.
    pub order: Vec<String>,
    /// `provider.allow_fallbacks`.
    pub allow_fallbacks: bool,
}

impl ProviderPrefs {
    /// `provider.zdr`: zero data retention is always required; no policy key can turn it off.
    pub const ZDR: bool = true;
}

impl ProviderSettings {
    /// The preferences for a request whose `model` is `model` (ASCII case ignored).
    pub fn for_model(&self, model: &str) -> ProviderPrefs {
        let over = self.per_model.get(&model.to_ascii_lowercase());
        ProviderPrefs {
            order: over
                .and_then(|o| o.order.clone())
                .unwrap_or_else(|| self.order.clone()),
            allow_fallbacks: over
                .and_then(|o| o.allow_fallbacks)
                .unwrap_or(self.allow_fallbacks),
        }
    }
}

/// `[intercept.fields]`: the top-level JSON fields forwarded per endpoint; others are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldAllowlists(pub BTreeMap<Endpoint, BTreeSet<String>>);

/// What `FieldAllowlists::allowed` returns for an endpoint without a body.
static NO_FIELDS: BTreeSet<String> = BTreeSet::new();

impl FieldAllowlists {
    /// The fields forwarded for `endpoint` (empty for `models`).
    pub fn allowed(&self, endpoint: Endpoint) -> &BTreeSet<String> {
        self.0.get(&endpoint).unwrap_or(&NO_FIELDS)
    }

    /// Whether `field` is forwarded for `endpoint`.
    pub fn allows(&self, endpoint: Endpoint, field: &str) -> bool {
        self.allowed(endpoint).contains(field)
    }
}

impl Default for FieldAllowlists {
    /// [`Endpoint::default_fields`] for every endpoint with a body.
    fn default() -> Self {
        let lists = Endpoint::ALL
            .into_iter()
            .filter(|e| e.has_body())
            .map(|e| {
                let fields = e.default_fields().iter().map(|f| (*f).to_owned()).collect();
                (e, fields)
            })
            .collect();
        FieldAllowlists(lists)
    }
}

/// `[intercept.budget]`: the hard spending limit and the files that record spend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSettings {
    /// The budget in micro-USD. `None` (no `max_cost_usd`, no `MAX_COST_USD`) means no money may
    /// be spent: every request with a cost is refused, as with a budget of 0.
    pub max_cost_micros: Option<Micros>,
    /// The HTTP status of a budget refusal: 429 (default, the reference's) or 402.
    pub refusal_status: u16,
    /// A request is refused unless at least this many completion tokens fit the remaining budget
    /// (default 16).
    pub min_completion_tokens: u32,
    /// Written into the usage file; empty when not set.
    pub evaluation_run_id: String,
    /// Holds `proxy_usage.json` and `proxy_inferences.jsonl` (default `/data`).
    pub data_dir: PathBuf,
}

impl BudgetSettings {
    /// The spendable amount: the budget, or 0 without one (fail closed).
    pub fn limit_micros(&self) -> Micros {
        self.max_cost_micros.unwrap_or(Micros::ZERO)
    }
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            max_cost_micros: None,
            refusal_status: 429,
            min_completion_tokens: 16,
            evaluation_run_id: String::new(),
            data_dir: PathBuf::from("/data"),
        }
    }
}

/// A model's price, every field in pico-USD (10⁻¹² USD) per unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    /// Per prompt (input) token.
    pub prompt: UnitPrice,
    /// Per completion (output) token.
    pub completion: UnitPrice,
    /// Per request.
    pub request: UnitPrice,
    /// Per input image.
    pub image: UnitPrice,
    /// Per internal reasoning token.
    pub reasoning: UnitPrice,
}

/// `[intercept.pricing]`: where prices come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricingSettings {
    /// Fetch `GET /api/v1/models` at start and every `refresh` (default true).
    pub fetch: bool,
    /// How often to fetch (default 10m).
    pub refresh: Duration,
    /// The price of a model known neither here nor upstream; `None` refuses such models.
    pub fallback: Option<Price>,
    /// Prices fixed by the policy (lowercased model id); they win over fetched prices.
    pub models: BTreeMap<String, Price>,
}

impl PricingSettings {
    /// The policy's own price for `model` (ASCII case ignored), without the fallback.
    pub fn configured(&self, model: &str) -> Option<&Price> {
        self.models.get(&model.to_ascii_lowercase())
    }
}

impl Default for PricingSettings {
    fn default() -> Self {
        PricingSettings {
            fetch: true,
            refresh: Duration::from_secs(10 * 60),
            fallback: None,
            models: BTreeMap::new(),
        }
    }
}

/// `[intercept.workspace]`: the background check of the OpenRouter workspace's privacy settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceSettings {
    /// The workspace id; the check runs only when it is set.
    pub id: Option<String>,
    /// Where the management key is read (default env `OPENROUTER_MANAGEMENT_KEY`).
    pub management_key: KeySource,
    /// How often the workspace is read (default 60s).
    pub refresh: Duration,
    /// After this long without a successful read, requests get 503 (default 300s; > `refresh`).
    pub stale_after: Duration,
}

impl WorkspaceSettings {
    /// The workspace id, when the check is on.
    pub fn enabled(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl Default for WorkspaceSettings {
    fn default() -> Self {
        WorkspaceSettings {
            id: None,
            management_key: KeySource::Env("OPENROUTER_MANAGEMENT_KEY".to_owned()),
            refresh: Duration::from_secs(60),
            stale_after: Duration::from_secs(300),
        }
    }
}

/// `[intercept.limits]`: request rate and concurrency towards the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    /// Sustained requests per second per intercepted host (default 10).
    pub requests_per_second: NonZeroU32,
    /// Requests allowed at once above the sustained rate (default twice the rate).
    pub burst: NonZeroU32,
    /// Upstream requests in flight at once; more wait for a slot (default 32).
    pub max_concurrent: NonZeroU32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            requests_per_second: NonZeroU32::new(10).expect("10 is not zero"),
            burst: NonZeroU32::new(20).expect("20 is not zero"),
            max_concurrent: NonZeroU32::new(32).expect("32 is not zero"),
        }
    }
}

/// Everything the LLM gateway needs beyond the intercepted host list (`Policy::intercept`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySettings {
    /// The APIs forwarded (default chat and embeddings).
    pub endpoints: EndpointSet,
    /// Where requests go (default `https://openrouter.ai`).
    pub upstream: Upstream,
    /// The largest request body in bytes (default 10 MiB; larger → 413).
    pub max_body: usize,
    /// Upstream TCP + TLS connect timeout (default 10s).
    pub connect_timeout: Duration,
    /// The longest the upstream may stay silent: before the response headers, and between body
    /// chunks after them (default 600s).
    pub read_timeout: Duration,
    /// An extra trust anchor for the upstream, besides the webpki roots (tests).
    pub extra_ca_file: Option<PathBuf>,
    /// Whether a response served by a model or provider the policy refuses is withheld from the
    /// agent (default true); off, it passes and the violation is only counted and logged.
    pub withhold_served_violations: bool,
    /// The gateway's CA and trust-file output.
    pub tls: TlsSettings,
    /// Key pinning and injection.
    pub auth: AuthSettings,
    /// Which model ids requests may name.
    pub models: ModelPolicy,
    /// Forced provider preferences.
    pub provider: ProviderSettings,
    /// Forwarded JSON fields per endpoint.
    pub fields: FieldAllowlists,
    /// The hard budget.
    pub budget: BudgetSettings,
    /// Prices.
    pub pricing: PricingSettings,
    /// The workspace privacy check.
    pub workspace: WorkspaceSettings,
    /// Rate and concurrency limits.
    pub limits: LimitSettings,
    /// The environment variables `Policy::apply_env` applied, for the summary (names only).
    pub env_overrides: Vec<&'static str>,
}

impl Default for GatewaySettings {
    /// Every default, as an empty `[intercept]` table compiles.
    fn default() -> Self {
        GatewaySettings {
            endpoints: EndpointSet::default(),
            upstream: Upstream::default(),
            max_body: DEFAULT_MAX_BODY,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(600),
            extra_ca_file: None,
            withhold_served_violations: true,
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            models: ModelPolicy::default(),
            provider: ProviderSettings::default(),
            fields: FieldAllowlists::default(),
            budget: BudgetSettings::default(),
            pricing: PricingSettings::default(),
            workspace: WorkspaceSettings::default(),
            limits: LimitSettings::default(),
            env_overrides: Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
