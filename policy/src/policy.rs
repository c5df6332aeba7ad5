//! The compiled policy: typed values the proxy reads on every connection.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::error::{PolicyError, Source};
use crate::gateway::GatewaySettings;
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
    /// Tunnel ClientHellos that carry Encrypted Client Hello (or ESNI) for this host, accepting
    /// that the real destination is then any host its client-facing server fronts. Default false.
    pub ech: bool,
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
    /// Destinations for connections captured by the catch-all redirect (`[capture]`).
    pub capture: CaptureSettings,
    /// The LLM gateway's settings: `[intercept]` beyond `hosts`, plus `apply_env`'s overrides.
    pub gateway: GatewaySettings,
    /// How tollgate answers the Pod's DNS queries (`[dns]`).
    pub dns: DnsSettings,
}

/// `[dns]`: which names tollgate resolves for the agent, through which upstream, within which
/// bounds. Read per query, so a reload applies to the next query.
#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// `false`: every name is answered NXDOMAIN locally, nothing is forwarded.
    pub enabled: bool,
    /// Names resolved in the agent phase besides the intercepted and tunnel-allowed hosts.
    pub allow: HostList,
    /// Resolvers to forward to; empty = the proxy's own resolv.conf `nameserver`s.
    pub upstream: Vec<std::net::SocketAddr>,
    /// TTLs relayed to the agent are capped at this.
    pub max_ttl: Duration,
    /// Bound on one upstream exchange (per resolver tried).
    pub upstream_timeout: Duration,
    /// Queries accepted per second (all clients together); more are dropped and counted.
    pub queries_per_second: std::num::NonZeroU32,
    /// Burst above the rate.
    pub burst: std::num::NonZeroU32,
    /// Upstream queries in flight at once; more are answered SERVFAIL.
    pub max_in_flight: std::num::NonZeroU32,
    /// DNS-over-TCP connections open at once; more are closed at accept.
    pub max_tcp_connections: std::num::NonZeroU32,
    /// A DNS-over-TCP connection with no query for this long is closed.
    pub tcp_idle_timeout: Duration,
}

/// An address range and, optionally, the only ports it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The range (a single address is a /32 or /128).
    pub net: ipnet::IpNet,
    /// The ports covered; empty means every port.
    pub ports: Vec<u16>,
}

impl Destination {
    /// Whether `addr` falls in the range and, when ports are listed, on one of them.
    pub fn matches(&self, addr: std::net::SocketAddr) -> bool {
        self.net.contains(&addr.ip())
            && (self.ports.is_empty() || self.ports.contains(&addr.port()))
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.net)?;
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            write!(f, " ports {}", ports.join(","))?;
        }
        Ok(())
    }
}

/// `[capture]`: the original-destination router's lists.
#[derive(Clone, Debug, Default)]
pub struct CaptureSettings {
    /// Agent phase: the only destinations captured connections may reach.
    pub allow: Vec<Destination>,
    /// Both phases: destinations never reached (in verification everything else passes).
    pub deny: Vec<Destination>,
}

impl CaptureSettings {
    /// The first allow entry that matches `addr`.
    pub fn allowed(&self, addr: std::net::SocketAddr) -> Option<&Destination> {
        self.allow.iter().find(|d| d.matches(addr))
    }

    /// The first deny entry that matches `addr`.
    pub fn denied(&self, addr: std::net::SocketAddr) -> Option<&Destination> {
        self.deny.iter().find(|d| d.matches(addr))
    }
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
    /// and the patterns themselves (the first few of each list), then the gateway's settings in
    /// brief. Never a secret: keys appear only as where they are read from.
    pub fn summary(&self) -> String {
        let names = |list: &HostList| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        let hosts = self.hosts.iter().map(|r| r.pattern.to_string()).collect();
        format!(
            "{} (policy version {}): default phase {}; intercept {}; tunnel allow {}; deny {}; \
             host rules {}; capture allow {}, deny {}; connect timeout {}, idle timeout {}; {}{}.",
            self.origin,
            crate::compile::SUPPORTED_VERSION,
            self.phase.as_str(),
            listing(names(&self.intercept)),
            listing(names(&self.allow)),
            listing(names(&self.deny)),
            listing(hosts),
            listing(self.capture.allow.iter().map(ToString::to_string).collect()),
            listing(self.capture.deny.iter().map(ToString::to_string).collect()),
            humantime::format_duration(self.tunnel.connect_timeout),
            humantime::format_duration(self.tunnel.idle_timeout),
            self.dns_summary(),
            self.gateway_summary(),
        )
    }

    /// The `[dns]` part of the summary.
    fn dns_summary(&self) -> String {
        let d = &self.dns;
        if !d.enabled {
            return "dns off (every name nxdomain)".to_owned();
        }
        let upstream = if d.upstream.is_empty() {
            "resolv.conf".to_owned()
        } else {
            let addrs: Vec<String> = d.upstream.iter().map(ToString::to_string).collect();
            addrs.join(", ")
        };
        format!(
            "dns allow {}, upstream {upstream}, max ttl {}",
            listing(d.allow.iter().map(ToString::to_string).collect()),
            humantime::format_duration(d.max_ttl),
        )
    }

    /// The gateway's part of the summary; nothing when no host is intercepted.
    fn gateway_summary(&self) -> String {
        if self.intercept.is_empty() {
            return String::new();
        }
        let g = &self.gateway;
        let endpoints: Vec<&str> = g.endpoints.iter().map(|e| e.name()).collect();
        let budget = match g.budget.max_cost_micros {
            Some(micros) => format!(
                "budget {} usd (refusals {})",
                micros, g.budget.refusal_status
            ),
            None => "no budget (every request with a cost is refused)".to_owned(),
        };
        let patterns = |list: &[crate::gateway::ModelPattern]| {
            listing(list.iter().map(ToString::to_string).collect())
        };
        let auth = match (&g.auth.api_key_sha256, &g.auth.inject) {
            (Some(_), Some(source)) => format!("key pinned, injected from {source}"),
            (Some(_), None) => "key pinned".to_owned(),
            (None, Some(source)) => format!("key injected from {source}"),
            (None, None) => "agent's key passed through".to_owned(),
        };
        let workspace = match g.workspace.enabled() {
            Some(id) => format!(
                "workspace check {id} every {}",
                humantime::format_duration(g.workspace.refresh)
            ),
            None => "workspace check off".to_owned(),
        };
        let env = if g.env_overrides.is_empty() {
            "none".to_owned()
        } else {
            g.env_overrides.join(", ")
        };
        format!(
            "; gateway to {}: endpoints {}; {budget}; models allow {}, deny {}; {auth}; {workspace}; \
             prices {} set, fetch {}; env overrides {env}",
            g.upstream,
            if endpoints.is_empty() {
                "none".to_owned()
            } else {
                endpoints.join(", ")
            },
            patterns(&g.models.allow),
            patterns(&g.models.deny),
            g.pricing.models.len(),
            if g.pricing.fetch { "on" } else { "off" },
        )
    }

    /// Settings that are valid but probably not what was meant, for `tollgate check` to print
    /// (one line each). Empty when nothing is intercepted.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.intercept.is_empty() {
            return out;
        }
        let g = &self.gateway;
        if g.budget.max_cost_micros.is_none() {
            out.push(
                "intercept.budget.max_cost_usd is not set (nor MAX_COST_USD): the gateway refuses \
                 every request that costs money"
                    .to_owned(),
            );
        }
        if !g.pricing.fetch && g.pricing.fallback.is_none() && g.pricing.models.is_empty() {
            out.push(
                "intercept.pricing has no prices, no fallback and fetch = false: every priced \
                 request is refused"
                    .to_owned(),
            );
        }
        if g.endpoints.iter().next().is_none() {
            out.push("intercept.endpoints is empty: the gateway forwards nothing".to_owned());
        }
        out
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
