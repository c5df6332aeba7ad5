//! The compiled policy: typed values the proxy reads on every connection.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::error::{PolicyError, Source};
use crate::host::{HostList, HostPattern};
use crate::phase::Phase;

/// Per-host dial settings from a `[hosts."<pattern>"]` table.
#[derive(Clone, Debug)]
pub struct HostRule {
    /// The table key, normalised.
    pub pattern: HostPattern,
    /// Addresses to dial instead of resolving the name (like curl --resolve); empty = resolve.
    pub pin: Vec<IpAddr>,
    /// Upstream port; `None` means 443.
    pub port: Option<u16>,
    /// Non-public ranges this host may be dialled in despite the default refusal.
    pub allow_ranges: Vec<ipnet::IpNet>,
}

/// Tunnel timeouts from `[tunnel]`.
#[derive(Clone, Debug)]
pub struct TunnelSettings {
    /// How long to wait for the upstream TCP connect (default 5s).
    pub connect_timeout: Duration,
    /// How long a tunnel may carry no bytes either way before it is closed (default 10m).
    pub idle_timeout: Duration,
}

/// A validated policy; every value in it is already known to be usable.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The file path, or `<embedded>`.
    pub origin: String,
    /// The fallback phase when neither the labels file nor the sentinel says otherwise.
    pub phase: Phase,
    /// Hosts whose TLS the LLM gateway terminates.
    pub intercept: HostList,
    /// Hosts tunnelled in the agent phase.
    pub allow: HostList,
    /// Hosts never tunnelled, in either phase.
    pub deny: HostList,
    /// Per-host dial settings.
    pub hosts: Vec<HostRule>,
    /// Tunnel timeouts.
    pub tunnel: TunnelSettings,
}

impl Policy {
    /// Parses and compiles policy text; `origin` names it in errors (a path, or `<embedded>`).
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        crate::compile::parse(Source { text, origin })
    }

    /// Reads and parses a policy file; an unreadable file is a `PolicyError` at line 0.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Source {
                text: "",
                origin: &origin,
            }
            .unlocated(format!("cannot read the policy file: {e}"))
        })?;
        Policy::parse(&text, &origin)
    }

    /// The built-in policy from `DEFAULT_POLICY_TOML`.
    pub fn embedded_default() -> Policy {
        Policy::parse(crate::DEFAULT_POLICY_TOML, "<embedded>")
            .expect("the embedded default policy parses (checked by a unit test)")
    }

    /// The most specific `[hosts]` rule for `host` (normalised), ranked like `HostList::find`.
    pub fn host_rule(&self, host: &str) -> Option<&HostRule> {
        crate::host::most_specific(self.hosts.iter(), host, |r| &r.pattern)
    }

    /// One short paragraph for `tollgate check` and reload logs: origin, version, phase, counts
    /// and the patterns themselves (the first few of each list).
    pub fn summary(&self) -> String {
        let names = |list: &HostList| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        let hosts = self.hosts.iter().map(|r| r.pattern.to_string()).collect();
        format!(
            "{} (policy version {}): default phase {}; intercept {}; tunnel allow {}; deny {}; \
             host rules {}; connect timeout {}, idle timeout {}.",
            self.origin,
            crate::compile::SUPPORTED_VERSION,
            self.phase.as_str(),
            listing(names(&self.intercept)),
            listing(names(&self.allow)),
            listing(names(&self.deny)),
            listing(hosts),
            humantime::format_duration(self.tunnel.connect_timeout),
            humantime::format_duration(self.tunnel.idle_timeout),
        )
    }
}

/// How many patterns a summary names per list before it just counts the rest.
const SUMMARY_NAMES: usize = 5;

/// "none", or "2 (a.com, *.b.com)", or "9 (a, b, c, d, e, +4 more)".
fn listing(mut names: Vec<String>) -> String {
    let count = names.len();
    if count == 0 {
        return "none".to_owned();
    }
    if count > SUMMARY_NAMES {
        names.truncate(SUMMARY_NAMES);
        names.push(format!("+{} more", count - SUMMARY_NAMES));
    }
    format!("{count} ({})", names.join(", "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
