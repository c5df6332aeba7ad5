//! `[hosts."<pattern>"]`: per-host dial settings (pinned addresses, port, non-public ranges,
//! the ECH opt-in).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use toml::Spanned;

use crate::error::{PolicyError, Source, key_segment};
use crate::host::HostPattern;
use crate::policy::HostRule;
use crate::raw::RawHost;

/// Why `*` cannot be a hosts key: pins or ranges for every host would undo the address rules.
const BARE_STAR: &str =
    "a bare \"*\" is not allowed as a hosts key; name a host or use \"*.example.com\"";

/// Compiles every `[hosts."<pattern>"]` table, in file order.
pub(super) fn compile(
    src: Source<'_>,
    raw: &BTreeMap<String, Spanned<RawHost>>,
) -> Result<Vec<HostRule>, PolicyError> {
    // serde hands the tables over sorted by key; errors should come in the order of the file.
    let mut tables: Vec<(&String, &Spanned<RawHost>)> = raw.iter().collect();
    tables.sort_by_key(|(_, table)| table.span().start);
    let mut rules: Vec<HostRule> = Vec::with_capacity(tables.len());
    let mut firsts: Vec<Range<usize>> = Vec::with_capacity(tables.len());
    for (written, table) in tables {
        let key = format!("hosts.{}", key_segment(written));
        let pattern = HostPattern::parse(written).map_err(|m| src.error(table.span(), &key, m))?;
        if pattern == HostPattern::Any {
            return Err(src.error(table.span(), key, BARE_STAR));
        }
        // "PyPI.org" and "pypi.org" are the same host: two tables for it would be ambiguous.
        if let Some(i) = rules.iter().position(|r| r.pattern == pattern) {
            let message = super::duplicate_message(src, written, firsts[i].clone());
            return Err(src.error(table.span(), key, message));
        }
        rules.push(rule(src, &key, pattern, table.get_ref())?);
        firsts.push(table.span());
    }
    Ok(rules)
}

fn rule(
    src: Source<'_>,
    key: &str,
    pattern: HostPattern,
    raw: &RawHost,
) -> Result<HostRule, PolicyError> {
    let pin = match &raw.pin {
        Some(list) => pins(src, &format!("{key}.pin"), list)?,
        None => Vec::new(),
    };
    let port = match &raw.port {
        Some(value) => Some(port(src, &format!("{key}.port"), value)?),
        None => None,
    };
    let allow_ranges = raw
        .allow_ranges
        .iter()
        .enumerate()
        .map(|(i, range)| ip_range(src, &format!("{key}.allow_ranges[{i}]"), range))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HostRule {
        pattern,
        pin,
        port,
        allow_ranges,
        ech: raw.ech.unwrap_or(false),
    })
}

/// Port 0 cannot be dialled; anything above 65535 does not exist.
pub(super) fn port(src: Source<'_>, key: &str, value: &Spanned<i64>) -> Result<u16, PolicyError> {
    u16::try_from(*value.get_ref())
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            src.error(
                value.span(),
                key,
                format!("expected a port from 1 to 65535, found {}", value.get_ref()),
            )
        })
}

/// An empty `pin` is refused rather than read as "resolve": a list that was meant to hold
/// addresses but lost them should not silently send traffic to whatever DNS says.
fn pins(
    src: Source<'_>,
    key: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<IpAddr>, PolicyError> {
    if list.get_ref().is_empty() {
        return Err(src.error(
            list.span(),
            key,
            "expected at least one ip address, found an empty list; remove `pin` to resolve the name",
        ));
    }
    list.get_ref()
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            ip.get_ref().parse::<IpAddr>().map_err(|_| {
                src.error(
                    ip.span(),
                    format!("{key}[{i}]"),
                    format!("expected an ip address such as \"192.0.2.10\" or \"2001:db8::10\", found {:?}", ip.get_ref()),
                )
            })
        })
        .collect()
}

/// A CIDR range, or a single address meaning just that address. Host bits are cleared
/// ("10.1.2.3/8" becomes "10.0.0.0/8") so the compiled policy shows what is actually allowed.
pub(super) fn ip_range(
    src: Source<'_>,
    key: &str,
    range: &Spanned<String>,
) -> Result<IpNet, PolicyError> {
    let text = range.get_ref();
    let net = match text.parse::<IpNet>() {
        Ok(net) => Ok(net.trunc()),
        Err(_) => text.parse::<IpAddr>().map(IpNet::from),
    };
    net.map_err(|_| {
        src.error(
            range.span(),
            key,
            format!(
                "expected an address range such as \"10.0.0.0/8\" or \"fd00::/8\", found {text:?}"
            ),
        )
    })
}
