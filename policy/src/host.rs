//! Host names and host patterns, normalised the same way for SNI and for policy text so that
//! comparing them is plain string equality.

use std::fmt;
use std::net::IpAddr;

/// The longest host name DNS can carry (253 characters without the trailing dot).
const MAX_HOST_LEN: usize = 253;
/// The longest single DNS label.
const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a usable host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing left after stripping the trailing dot.
    #[error("empty host name")]
    Empty,
    /// Longer than 253 characters.
    #[error("host name longer than 253 characters")]
    TooLong,
    /// A label is empty, too long, starts or ends with '-', or has a character outside a-z 0-9 - _.
    #[error(
        "invalid label {0:?}: expected 1 to 63 of a-z, 0-9, '-', '_', not starting or ending with '-'"
    )]
    InvalidLabel(String),
    /// An IP address where a host name was expected.
    #[error("expected a host name, found an ip address")]
    IpLiteral,
}

/// Normalises a host name as seen in SNI or written in policy: lowercase, strip one trailing dot,
/// validate labels, refuse IP literals (SNI must not carry them, and policy matches names only).
pub fn normalize_host(s: &str) -> Result<String, HostError> {
    let lower = s.to_ascii_lowercase();
    let host = lower.strip_suffix('.').unwrap_or(&lower);
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if looks_like_ip(host) {
        return Err(HostError::IpLiteral);
    }
    if host.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    let mut last = "";
    for label in host.split('.') {
        if !valid_label(label) {
            return Err(HostError::InvalidLabel(label.to_owned()));
        }
        last = label;
    }
    // Resolvers and URL parsers read a numeric last label ("10.1", "0x7f.1", "2130706433") as
    // IPv4; a name like that could smuggle an address past name-based rules.
    if is_numeric_label(last) {
        return Err(HostError::IpLiteral);
    }
    Ok(host.to_owned())
}

/// True for anything an address parser would take: v4, v6, or bracketed v6.
fn looks_like_ip(host: &str) -> bool {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.contains(':') || unbracketed.parse::<IpAddr>().is_ok()
}

fn valid_label(label: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Decimal, or hex with a `0x` prefix: the forms `inet_aton` accepts for an address part.
fn is_numeric_label(label: &str) -> bool {
    let hex = label.strip_prefix("0x");
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// One host pattern from the policy, already normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host.
    Exact(String),
    /// `*.example.com`, stored as `example.com`: one or more labels before it, never the name itself.
    Suffix(String),
    /// A bare `*`: every host (only the deny list accepts it).
    Any,
}

impl HostPattern {
    /// Parses `example.com`, `*.example.com` or `*`; the message says what was wrong.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        let (wild, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if rest.contains('*') {
            return Err(format!(
                "invalid host pattern {s:?}: \"*\" is only allowed as the whole first label, as in \"*.example.com\""
            ));
        }
        let host = normalize_host(rest).map_err(|e| format!("invalid host pattern {s:?}: {e}"))?;
        Ok(if wild {
            HostPattern::Suffix(host)
        } else {
            HostPattern::Exact(host)
        })
    }

    /// Whether `host` (already normalised) falls under this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty()),
            HostPattern::Any => true,
        }
    }

    /// Orders matches: any exact name beats any suffix, a longer suffix beats a shorter one,
    /// and a bare `*` comes last, so a specific rule is never shadowed by a broad one.
    fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(name) => (2, name.len()),
            HostPattern::Suffix(suffix) => (1, suffix.len()),
            HostPattern::Any => (0, 0),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Suffix(suffix) => write!(f, "*.{suffix}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// A list of host patterns (intercept, allow or deny), free of duplicates once compiled.
#[derive(Clone, Debug, Default)]
pub struct HostList(pub Vec<HostPattern>);

impl HostList {
    /// The most specific pattern matching `host` (normalised): exact, then longest suffix, then `*`.
    pub fn find(&self, host: &str) -> Option<&HostPattern> {
        most_specific(self.0.iter(), host, |p| p)
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the list has no patterns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The patterns in file order.
    pub fn iter(&self) -> impl Iterator<Item = &HostPattern> {
        self.0.iter()
    }
}

/// Shared by `HostList::find` and `Policy::host_rule` so both rank matches the same way.
pub(crate) fn most_specific<'a, T>(
    items: impl Iterator<Item = &'a T>,
    host: &str,
    pattern: impl Fn(&T) -> &HostPattern,
) -> Option<&'a T> {
    items
        .filter(|item| pattern(item).matches(host))
        // On a tie (impossible after compile, which refuses duplicates) the first one wins.
        .fold(None, |best: Option<&'a T>, item| match best {
            Some(b) if pattern(b).specificity() >= pattern(item).specificity() => Some(b),
            _ => Some(item),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
