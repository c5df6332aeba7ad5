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
}

/// `[intercept]`: hosts whose TLS the LLM gateway terminates.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawIntercept {
    pub hosts: Vec<Spanned<String>>,
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
}
