//! `[dns]`: the names tollgate resolves for the agent, the upstream it asks, and the bounds on
//! both sides (rate, in-flight queries, TCP connections, TTLs).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use toml::Spanned;

use crate::error::{PolicyError, Source};
use crate::policy::DnsSettings;
use crate::raw::RawDns;

/// Default TTL cap: short, so a phase flip or a policy reload is not outlived by agent caches.
pub(crate) const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60);
/// Default bound on one upstream exchange.
pub(crate) const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Default idle time of a DNS-over-TCP connection.
pub(crate) const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(10);
/// Defaults for the limits: far above what a resolver library needs, far below a flood.
const DEFAULT_QPS: u32 = 200;
const DEFAULT_BURST: u32 = 400;
const DEFAULT_IN_FLIGHT: u32 = 64;
const DEFAULT_TCP_CONNECTIONS: u32 = 32;
/// Upper bounds, so a typo cannot remove a limit.
const MAX_QPS: u32 = 100_000;
const MAX_IN_FLIGHT: u32 = 4096;
const MAX_TCP_CONNECTIONS: u32 = 1024;
/// A TTL cap above a day is no cap.
const MAX_TTL_CAP: Duration = Duration::from_secs(86_400);

/// Why `*` cannot be in `dns.allow`: every name would leave the Pod in the agent phase.
const BARE_STAR: &str = "a bare \"*\" is not allowed in dns.allow: every name would be forwarded in the agent phase; name domains or use \"*.example.com\"";

/// Compiles `[dns]`.
pub(super) fn compile(src: Source<'_>, raw: &RawDns) -> Result<DnsSettings, PolicyError> {
    let allow = super::host_list(src, "dns.allow", &raw.allow, Some(BARE_STAR))?;
    let upstream = match &raw.upstream {
        None => Vec::new(),
        Some(list) => upstream(src, list)?,
    };
    let max_ttl = super::duration(src, "dns.max_ttl", raw.max_ttl.as_ref(), DEFAULT_MAX_TTL)?;
    if max_ttl > MAX_TTL_CAP {
        let span = raw.max_ttl.as_ref().map(Spanned::span).unwrap_or_default();
        return Err(src.error(span, "dns.max_ttl", "expected a duration of at most 1 day"));
    }
    let limit = |key: &str, value: &Option<Spanned<i64>>, default: u32, max: u32| match value {
        Some(v) => super::positive(src, key, v, max),
        None => Ok(NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN)),
    };
    Ok(DnsSettings {
        enabled: raw.enabled.unwrap_or(true),
        allow,
        upstream,
        max_ttl,
        upstream_timeout: super::duration(
            src,
            "dns.upstream_timeout",
            raw.upstream_timeout.as_ref(),
            DEFAULT_UPSTREAM_TIMEOUT,
        )?,
        queries_per_second: limit(
            "dns.queries_per_second",
            &raw.queries_per_second,
            DEFAULT_QPS,
            MAX_QPS,
        )?,
        burst: limit("dns.burst", &raw.burst, DEFAULT_BURST, MAX_QPS)?,
        max_in_flight: limit(
            "dns.max_in_flight",
            &raw.max_in_flight,
            DEFAULT_IN_FLIGHT,
            MAX_IN_FLIGHT,
        )?,
        max_tcp_connections: limit(
            "dns.max_tcp_connections",
            &raw.max_tcp_connections,
            DEFAULT_TCP_CONNECTIONS,
            MAX_TCP_CONNECTIONS,
        )?,
        tcp_idle_timeout: super::duration(
            src,
            "dns.tcp_idle_timeout",
            raw.tcp_idle_timeout.as_ref(),
            DEFAULT_TCP_IDLE,
        )?,
    })
}

/// `["10.96.0.10", "[2001:db8::53]:5353"]`: an address, optionally with a port (default 53).
fn upstream(
    src: Source<'_>,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<SocketAddr>, PolicyError> {
    if list.get_ref().is_empty() {
        return Err(src.error(
            list.span(),
            "dns.upstream",
            "expected at least one resolver, found an empty list; remove `upstream` to use the proxy's resolv.conf",
        ));
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for (i, item) in list.get_ref().iter().enumerate() {
        let key = format!("dns.upstream[{i}]");
        let text = item.get_ref();
        let addr = text
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
            .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
            .ok_or_else(|| {
                src.error(
                    item.span(),
                    &key,
                    format!(
                        "expected a resolver address such as \"10.96.0.10\" or \"[2001:db8::53]:53\", found {text:?}"
                    ),
                )
            })?;
        if out.contains(&addr) {
            return Err(src.error(item.span(), key, format!("duplicate resolver {addr}")));
        }
        out.push(addr);
    }
    Ok(out)
}
