//! tollgate's policy: a versioned TOML file (`version = 1`) read into raw serde structs (unknown
//! keys refused), then compiled into the typed values below, which cannot be invalid. The schema
//! is documented in `policy/README.md`; `examples/` holds commented policies.
//!
//! Layout, in the order a policy file passes through it:
//!
//! ```text
//! text → raw (serde, spans) → compile{,/intercept,/tunnel,/hosts} → Policy
//!                                  └─ host (normalize_host, HostPattern), error (PolicyError)
//! ```
//!
//! - `raw`: the file as written, every value that still needs checking wrapped in `Spanned`.
//! - `compile`: version, phase and the shared helpers; one submodule per table.
//! - `host`: host-name normalisation and patterns, shared with the proxy's SNI handling.
//! - `error`: `PolicyError` and the mapping of toml/serde errors to line, column and key path.
//! - `policy`: the compiled `Policy` and its lookups; `phase`: `Phase`.
//!
//! CONTRACT (used by the proxy; keep these names and signatures):
//! - `Policy::parse(text, origin) -> Result<Policy, PolicyError>`
//! - `Policy::load(path) -> Result<Policy, PolicyError>`
//! - `Policy::embedded_default() -> Policy` (agent phase, intercept openrouter.ai, nothing else)
//! - `Policy::{phase, intercept, allow, deny, hosts, tunnel}` fields, `Policy::host_rule(host)`
//! - `HostPattern::matches(&self, host)`, `Display` gives the pattern as written
//! - `Phase::{Agent, Verification}`, `Phase::as_str()`, `Phase::from_label(&str) -> Option<Phase>`
//! - `PolicyError` Display: `<origin>:<line>:<col>: <key>: <what was expected / found>`
#![forbid(unsafe_code)]

mod compile;
mod error;
mod host;
mod phase;
mod policy;
mod raw;

pub use error::PolicyError;
pub use host::{HostError, HostList, HostPattern, normalize_host};
pub use phase::Phase;
pub use policy::{HostRule, Policy, TunnelSettings};

/// The built-in policy (agent phase, intercept openrouter.ai, nothing else), used without a file.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../examples/default.toml");

/// The policy schema version this build reads; files with any other `version` are refused.
pub const SCHEMA_VERSION: i64 = compile::SUPPORTED_VERSION;
