//! tollgate's policy: a versioned TOML file (`version = 1`) read into raw serde structs (unknown
//! keys refused), then compiled into the typed values below, which cannot be invalid. The schema
//! is documented in `policy/README.md`; `examples/` holds commented policies.
//!
//! Layout, in the order a policy file passes through it:
//!
//! ```text
//! text → raw (serde, spans) → compile{,/intercept{,/access,/requests,/spend},/tunnel,/hosts,/capture,/dns}
//!      → Policy { .., gateway: GatewaySettings } → env (apply_env: the reference's variables)
//!   shared: host (normalize_host, HostPattern), gateway::parse (pure value parsers),
//!           money (exact USD), error (PolicyError)
//! ```
//!
//! - `raw`: the file as written, every value that still needs checking wrapped in `Spanned`.
//! - `compile`: version, phase and the shared helpers; one submodule per table.
//! - `host`: host-name normalisation and patterns, shared with the proxy's SNI handling.
//! - `error`: `PolicyError` and the mapping of toml/serde errors to line, column and key path.
//! - `policy`: the compiled `Policy` and its lookups; `phase`: `Phase`.
//! - `gateway`: the LLM gateway's compiled settings (`GatewaySettings`, model rules, endpoints);
//!   `gateway::parse` holds the value parsers both the file and the environment go through.
//! - `env`: `Policy::apply_env`, the reference sidecar's environment variables.
//! - `money`: USD as integers (`Micros`, `UnitPrice`), the one parser and formatter of amounts
//!   and prices (public: the proxy and the launcher use it too).
//!
//! CONTRACT (used by the proxy; keep these names and signatures):
//! - `Policy::parse(text, origin) -> Result<Policy, PolicyError>`
//! - `Policy::load(path) -> Result<Policy, PolicyError>`
//! - `Policy::embedded_default() -> Policy` (agent phase, intercept openrouter.ai, nothing else)
//! - `Policy::{phase, intercept, allow, deny, hosts, tunnel, capture, gateway}` fields,
//!   `Policy::host_rule(host)`, `Policy::apply_env(&dyn Fn(&str) -> Option<String>)`
//! - `HostPattern::matches(&self, host)`, `Display` gives the pattern as written
//! - `Phase::{Agent, Verification}`, `Phase::as_str()`, `Phase::from_label(&str) -> Option<Phase>`
//! - `PolicyError` Display: `<origin>:<line>:<col>: <key>: <what was expected / found>`
#![forbid(unsafe_code)]

mod compile;
mod env;
mod error;
mod gateway;
mod host;
pub mod money;
mod phase;
mod policy;
mod raw;

pub use env::ENV_VARS;
pub use error::PolicyError;
pub use gateway::{
    AliasKind, AuthSettings, BudgetSettings, CaFiles, DEFAULT_MAX_BODY, Endpoint, EndpointSet,
    FieldAllowlists, GatewaySettings, KeySource, LimitSettings, MAX_MAX_BODY, ModelDenied,
    ModelPattern, ModelPolicy, Price, PricingSettings, ProviderOverride, ProviderPrefs,
    ProviderSettings, TlsSettings, Upstream, WorkspaceSettings,
};
pub use host::{HostError, HostList, HostPattern, normalize_host};
pub use phase::Phase;
pub use policy::{CaptureSettings, Destination, DnsSettings, HostRule, Policy, TunnelSettings};

/// The built-in policy (agent phase, intercept openrouter.ai, nothing else), used without a file.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../examples/default.toml");

/// The policy schema version this build reads; files with any other `version` are refused.
pub const SCHEMA_VERSION: i64 = compile::SUPPORTED_VERSION;
