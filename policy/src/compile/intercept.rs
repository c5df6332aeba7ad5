//! `[intercept]`: the hosts whose TLS the LLM gateway terminates, and the gateway's own keys. The
//! sub-tables are compiled in `intercept/`: `access` (tls, auth, workspace), `requests` (models,
//! provider, fields, limits) and `spend` (budget, pricing).

mod access;
mod requests;
mod spend;

use std::collections::BTreeSet;

use toml::Spanned;

use crate::error::{PolicyError, Source};
use crate::gateway::{Endpoint, EndpointSet, GatewaySettings, parse};
use crate::host::HostList;
use crate::raw::RawIntercept;

/// Why `*` cannot be intercepted: the gateway would have to terminate TLS for every host.
const BARE_STAR: &str = "a bare \"*\" is not allowed in the intercept list; name the llm api hosts, e.g. \"openrouter.ai\"";

/// The compiled `[intercept]` table.
pub(super) struct Intercept {
    pub hosts: HostList,
    pub gateway: GatewaySettings,
}

/// Compiles `[intercept]` and its sub-tables; absent keys take `GatewaySettings::default()`.
pub(super) fn compile(src: Source<'_>, raw: &RawIntercept) -> Result<Intercept, PolicyError> {
    let hosts = super::host_list(src, "intercept.hosts", &raw.hosts, Some(BARE_STAR))?;
    let defaults = GatewaySettings::default();
    let gateway = GatewaySettings {
        endpoints: match &raw.endpoints {
            Some(list) => endpoints(src, list)?,
            None => defaults.endpoints,
        },
        upstream: super::optional(
            src,
            "intercept.upstream",
            raw.upstream.as_ref(),
            parse::upstream,
        )?
        .unwrap_or(defaults.upstream),
        max_body: match &raw.max_body {
            Some(value) => max_body(src, value)?,
            None => defaults.max_body,
        },
        connect_timeout: super::duration(
            src,
            "intercept.connect_timeout",
            raw.connect_timeout.as_ref(),
            defaults.connect_timeout,
        )?,
        read_timeout: super::duration(
            src,
            "intercept.read_timeout",
            raw.read_timeout.as_ref(),
            defaults.read_timeout,
        )?,
        extra_ca_file: super::optional(
            src,
            "intercept.extra_ca_file",
            raw.extra_ca_file.as_ref(),
            parse::absolute_path,
        )?,
        withhold_served_violations: raw
            .withhold_served_violations
            .unwrap_or(defaults.withhold_served_violations),
        tls: access::tls(src, &raw.tls)?,
        auth: access::auth(src, &raw.auth)?,
        models: requests::models(src, &raw.models)?,
        provider: requests::provider(src, &raw.provider)?,
        fields: requests::fields(src, &raw.fields)?,
        budget: spend::budget(src, &raw.budget)?,
        pricing: spend::pricing(src, &raw.pricing)?,
        workspace: access::workspace(src, &raw.workspace)?,
        limits: requests::limits(src, &raw.limits)?,
        env_overrides: Vec::new(),
    };
    Ok(Intercept { hosts, gateway })
}

/// Endpoint names; an empty list is allowed (the gateway then forwards nothing).
fn endpoints(src: Source<'_>, items: &[Spanned<String>]) -> Result<EndpointSet, PolicyError> {
    let list = super::unique_list(src, "intercept.endpoints", "endpoint", items, |name| {
        Endpoint::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Endpoint::ALL.iter().map(|e| e.name()).collect();
            format!("expected one of {}, found {name:?}", names.join(", "))
        })
    })?;
    Ok(EndpointSet(list.into_iter().collect::<BTreeSet<_>>()))
}

/// Bytes as an integer, or a string with a binary unit.
fn max_body(src: Source<'_>, value: &Spanned<toml::Value>) -> Result<usize, PolicyError> {
    const KEY: &str = "intercept.max_body";
    let parsed = match value.get_ref() {
        toml::Value::Integer(i) => {
            parse::bytes(u64::try_from(*i).ok()).map_err(|m| format!("{m}, found {i}"))
        }
        toml::Value::String(s) => parse::byte_size(s),
        other => Err(format!(
            "expected a size such as 10485760 or \"10MiB\", found {}",
            super::article(other.type_str())
        )),
    };
    parsed.map_err(|m| src.error(value.span(), KEY, m))
}
