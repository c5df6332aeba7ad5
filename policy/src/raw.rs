//! The policy file exactly as written: serde structs with every key known (`deny_unknown_fields`),
//! and `Spanned` around each value the compile step still has to check, so its errors can point at
//! a line and column. Nothing here is validated; `compile` turns these into typed values.
//!
//! To add a table: a `Raw<Table>` struct here with `#[serde(default, deny_unknown_fields)]`, a
//! field on [`RawPolicy`], and a `compile/<table>.rs` that turns it into typed values.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file (schema version 1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    /// Required so that a future incompatible schema is refused rather than misread.
    pub version: Spanned<i64>,
    pub phase: Option<Spanned<String>>,
    #[serde(default)]
    pub intercept: RawIntercept,
    #[serde(default)]
    pub tunnel: RawTunnel,
    /// Keyed by plain strings so error paths can name the host (a `Spanned` key shows up as an
    /// unknown path segment); the table's span locates key errors and restores file order.
    #[serde(default)]
    pub hosts: BTreeMap<String, Spanned<RawHost>>,
    #[serde(default)]
    pub capture: RawCapture,
    #[serde(default)]
    pub dns: RawDns,
}

/// `[intercept]`: hosts whose TLS the LLM gateway terminates, and the gateway's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawIntercept {
    pub hosts: Vec<Spanned<String>>,
    pub endpoints: Option<Vec<Spanned<String>>>,
    pub upstream: Option<Spanned<String>>,
    /// An integer (bytes) or a string with a unit ("10MiB"): checked in `compile`.
    pub max_body: Option<Spanned<toml::Value>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub read_timeout: Option<Spanned<String>>,
    pub extra_ca_file: Option<Spanned<String>>,
    pub withhold_served_violations: Option<bool>,
    pub tls: RawTls,
    pub auth: RawAuth,
    pub models: RawModels,
    pub provider: RawProvider,
    pub fields: RawFields,
    pub budget: RawBudget,
    pub pricing: RawPricing,
    pub workspace: RawWorkspace,
    pub limits: RawLimits,
}

/// `[intercept.tls]`: the gateway's CA and where the agent's trust files go.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawTls {
    pub ca_cert: Option<Spanned<String>>,
    pub ca_key: Option<Spanned<String>>,
    pub output_dir: Option<Spanned<String>>,
    pub system_roots: Option<Spanned<String>>,
}

/// `[intercept.auth]`: key pinning and injection.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub api_key_sha256: Option<Spanned<String>>,
    pub inject_key_env: Option<Spanned<String>>,
    pub inject_key_file: Option<Spanned<String>>,
}

/// `[intercept.models]`: model id globs.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawModels {
    /// `None` keeps the default `["*"]`; `[]` allows nothing.
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Vec<Spanned<String>>,
}

/// `[intercept.provider]`: forced provider preferences.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawProvider {
    pub order: Option<Vec<Spanned<String>>>,
    pub allow_fallbacks: Option<bool>,
    /// Keyed by plain strings, like `[hosts]`, so error paths name the model.
    pub models: BTreeMap<String, Spanned<RawProviderModel>>,
}

/// `[intercept.provider.models."<id>"]`: one model's preferences.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawProviderModel {
    pub order: Option<Vec<Spanned<String>>>,
    pub allow_fallbacks: Option<bool>,
}

/// `[intercept.fields]`: per-endpoint field allowlists (only endpoints that take a body).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawFields {
    pub chat: Option<Spanned<Vec<Spanned<String>>>>,
    pub embeddings: Option<Spanned<Vec<Spanned<String>>>>,
    pub completions: Option<Spanned<Vec<Spanned<String>>>>,
    pub responses: Option<Spanned<Vec<Spanned<String>>>>,
    pub messages: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[intercept.budget]`: the hard budget and its files.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawBudget {
    /// A decimal string or a TOML number; a float is read from its literal text, exactly.
    pub max_cost_usd: Option<Spanned<toml::Value>>,
    pub refusal_status: Option<Spanned<i64>>,
    pub min_completion_tokens: Option<Spanned<i64>>,
    pub evaluation_run_id: Option<Spanned<String>>,
    pub data_dir: Option<Spanned<String>>,
}

/// `[intercept.pricing]`: price sources.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawPricing {
    pub fetch: Option<bool>,
    pub refresh: Option<Spanned<String>>,
    pub fallback: Option<RawPrice>,
    pub models: BTreeMap<String, Spanned<RawPrice>>,
}

/// A price table: USD per unit, as decimal strings or numbers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    pub prompt: Spanned<toml::Value>,
    pub completion: Spanned<toml::Value>,
    pub request: Option<Spanned<toml::Value>>,
    pub image: Option<Spanned<toml::Value>>,
    pub reasoning: Option<Spanned<toml::Value>>,
}

/// `[intercept.workspace]`: the workspace privacy check.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawWorkspace {
    pub id: Option<Spanned<String>>,
    pub management_key_env: Option<Spanned<String>>,
    pub management_key_file: Option<Spanned<String>>,
    pub refresh: Option<Spanned<String>>,
    pub stale_after: Option<Spanned<String>>,
}

/// `[intercept.limits]`: rate and concurrency. Integers read wide so 0 or -1 get our message.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub requests_per_second: Option<Spanned<i64>>,
    pub burst: Option<Spanned<i64>>,
    pub max_concurrent: Option<Spanned<i64>>,
}

/// `[tunnel]`: which hosts are tunnelled and for how long.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawTunnel {
    pub allow: Vec<Spanned<String>>,
    pub deny: Vec<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
}

/// `[hosts."<pattern>"]`: how to dial one host or family of hosts.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawHost {
    /// Spanned as a whole so an empty list can be pointed at.
    pub pin: Option<Spanned<Vec<Spanned<String>>>>,
    /// Read wider than u16 so that 0 or 70000 get our message, not serde's.
    pub port: Option<Spanned<i64>>,
    pub allow_ranges: Vec<Spanned<String>>,
    /// Opt-in to tunnelling ECH-bearing hellos for this host.
    pub ech: Option<bool>,
}

/// `[capture]`: where connections captured by the catch-all redirect (not the SNI ports) may go.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawCapture {
    pub allow: Vec<Spanned<RawDestination>>,
    pub deny: Vec<Spanned<RawDestination>>,
}

/// `{ cidr = "198.51.100.0/24", ports = [5432] }`: an address range, optionally some ports.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDestination {
    pub cidr: Spanned<String>,
    pub ports: Option<Vec<Spanned<i64>>>,
}

/// `[dns]`: tollgate's answers to the Pod's DNS queries. Integers read wide so 0 or -1 get our
/// message.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawDns {
    pub enabled: Option<bool>,
    pub allow: Vec<Spanned<String>>,
    pub upstream: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_ttl: Option<Spanned<String>>,
    pub upstream_timeout: Option<Spanned<String>>,
    pub queries_per_second: Option<Spanned<i64>>,
    pub burst: Option<Spanned<i64>>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub max_tcp_connections: Option<Spanned<i64>>,
    pub tcp_idle_timeout: Option<Spanned<String>>,
}
