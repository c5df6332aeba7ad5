//! The compile step: raw file → `Policy`. Each table has its own module under `compile/`; this
//! file holds the top-level keys and the helpers the tables share (host lists, durations, located
//! wrappers around the pure parsers in `gateway::parse` and `money`).

mod capture;
mod dns;
mod hosts;
mod intercept;
mod tunnel;

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::error::{PolicyError, Source};
use crate::host::{HostList, HostPattern};
use crate::phase::Phase;
use crate::policy::Policy;
use crate::raw::RawPolicy;

/// The only schema version this build understands.
pub(crate) const SUPPORTED_VERSION: i64 = 1;

/// Reads TOML text into the raw structs, then compiles them.
pub(crate) fn parse(src: Source<'_>) -> Result<Policy, PolicyError> {
    let deserializer = toml::Deserializer::parse(src.text).map_err(|e| src.syntax(&e))?;
    let raw: RawPolicy =
        serde_path_to_error::deserialize(deserializer).map_err(|e| src.schema(&e))?;
    compile(src, &raw)
}

fn compile(src: Source<'_>, raw: &RawPolicy) -> Result<Policy, PolicyError> {
    // The version first: a file for another schema should say so, not fail on some later key.
    if *raw.version.get_ref() != SUPPORTED_VERSION {
        return Err(src.error(
            raw.version.span(),
            "version",
            format!(
                "unsupported policy version {}, expected {SUPPORTED_VERSION}",
                raw.version.get_ref()
            ),
        ));
    }
    let phase = match &raw.phase {
        Some(phase) => compile_phase(src, phase)?,
        None => Phase::Agent,
    };
    let intercept = intercept::compile(src, &raw.intercept)?;
    let tunnel = tunnel::compile(src, &raw.tunnel)?;
    let hosts = hosts::compile(src, &raw.hosts)?;
    let capture = capture::compile(src, &raw.capture)?;
    let dns = dns::compile(src, &raw.dns)?;
    Ok(Policy {
        origin: src.origin.to_owned(),
        phase,
        intercept: intercept.hosts,
        allow: tunnel.allow,
        deny: tunnel.deny,
        hosts,
        tunnel: tunnel.settings,
        capture,
        gateway: intercept.gateway,
        dns,
    })
}

/// Exact lowercase words only: unlike a Pod label, the policy file has no reason to vary them.
fn compile_phase(src: Source<'_>, phase: &Spanned<String>) -> Result<Phase, PolicyError> {
    match phase.get_ref().as_str() {
        "agent" => Ok(Phase::Agent),
        "verification" => Ok(Phase::Verification),
        other => Err(src.error(
            phase.span(),
            "phase",
            format!("expected \"agent\" or \"verification\", found {other:?}"),
        )),
    }
}

/// Compiles a list of host patterns. `bare_star` is `None` where `*` is allowed, or the message
/// explaining why it is not; duplicates (after normalising) are refused so that removing one
/// line from the file always changes what the policy does.
pub(crate) fn host_list(
    src: Source<'_>,
    key: &str,
    items: &[Spanned<String>],
    bare_star: Option<&str>,
) -> Result<HostList, PolicyError> {
    let mut list: Vec<HostPattern> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let parsed =
            HostPattern::parse(item.get_ref()).map_err(|m| src.error(item.span(), &item_key, m))?;
        if let (HostPattern::Any, Some(why)) = (&parsed, bare_star) {
            return Err(src.error(item.span(), item_key, why));
        }
        if let Some(first) = list.iter().position(|p| *p == parsed) {
            let message = duplicate_message(src, item.get_ref(), items[first].span());
            return Err(src.error(item.span(), item_key, message));
        }
        list.push(parsed);
    }
    Ok(HostList(list))
}

/// `duplicate pattern "x", already listed at line L`: the line lets the reader find the other copy.
pub(crate) fn duplicate_message(src: Source<'_>, written: &str, first: Range<usize>) -> String {
    format!(
        "duplicate pattern {written:?}, already listed at line {}",
        src.line(first.start)
    )
}

/// A humantime duration ("5s", "10m", "1h 30m") that must be greater than zero: a zero timeout
/// would fail every connection, which is never what the author meant.
pub(crate) fn duration(
    src: Source<'_>,
    key: &str,
    value: Option<&Spanned<String>>,
    default: Duration,
) -> Result<Duration, PolicyError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let text = value.get_ref();
    let parsed = humantime::parse_duration(text).map_err(|_| {
        src.error(
            value.span(),
            key,
            format!("expected a duration such as \"5s\" or \"10m\", found {text:?}"),
        )
    })?;
    if parsed.is_zero() {
        return Err(src.error(
            value.span(),
            key,
            format!("expected a duration greater than zero, found {text:?}"),
        ));
    }
    Ok(parsed)
}

/// A string value run through one of the pure parsers in `gateway::parse`, its message located at
/// the value.
pub(crate) fn checked<T>(
    src: Source<'_>,
    key: &str,
    value: &Spanned<String>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, PolicyError> {
    parse(value.get_ref()).map_err(|m| src.error(value.span(), key, m))
}

/// `checked` for an optional key: `None` when the key is absent.
pub(crate) fn optional<T>(
    src: Source<'_>,
    key: &str,
    value: Option<&Spanned<String>>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, PolicyError> {
    value.map(|v| checked(src, key, v, parse)).transpose()
}

/// A list of strings, each parsed, with repeats (after parsing) refused: `what` names an item in
/// the message ("duplicate provider \"x\", already listed at line 4").
pub(crate) fn unique_list<T: PartialEq>(
    src: Source<'_>,
    key: &str,
    what: &str,
    items: &[Spanned<String>],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, PolicyError> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let value = checked(src, &item_key, item, &parse)?;
        if let Some(first) = out.iter().position(|v| *v == value) {
            let message = format!(
                "duplicate {what} {:?}, already listed at line {}",
                item.get_ref(),
                src.line(items[first].span().start)
            );
            return Err(src.error(item.span(), item_key, message));
        }
        out.push(value);
    }
    Ok(out)
}

/// The decimal text of a value that may be written as a string or a TOML number. A float is taken
/// from its literal text (underscores removed), so `5.10` stays exactly 5.10, never a binary
/// approximation; `what` completes "expected <what>, found a boolean".
pub(crate) fn number_text(
    src: Source<'_>,
    key: &str,
    value: &Spanned<toml::Value>,
    what: &str,
) -> Result<String, PolicyError> {
    match value.get_ref() {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(_) => {
            let literal = src.text.get(value.span()).unwrap_or_default();
            Ok(literal.replace('_', ""))
        }
        other => Err(src.error(
            value.span(),
            key,
            format!("expected {what}, found {}", article(other.type_str())),
        )),
    }
}

/// "a boolean", "an array".
pub(crate) fn article(type_name: &str) -> String {
    let an = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if an { "an" } else { "a" })
}

/// An amount of USD (string or number) through one of the `money` parsers for operators'
/// amounts (`Micros::parse_usd`, `UnitPrice::parse_usd`).
pub(crate) fn usd<T>(
    src: Source<'_>,
    key: &str,
    value: &Spanned<toml::Value>,
    parse: fn(&str) -> Result<T, crate::money::MoneyError>,
) -> Result<T, PolicyError> {
    let text = number_text(src, key, value, "an amount in usd such as \"5.00\"")?;
    parse(&text).map_err(|e| src.error(value.span(), key, format!("{e}, found {text:?}")))
}

/// An integer in `1..=max`: counts and limits where zero would refuse everything.
pub(crate) fn positive(
    src: Source<'_>,
    key: &str,
    value: &Spanned<i64>,
    max: u32,
) -> Result<std::num::NonZeroU32, PolicyError> {
    u32::try_from(*value.get_ref())
        .ok()
        .filter(|v| *v <= max)
        .and_then(std::num::NonZeroU32::new)
        .ok_or_else(|| {
            src.error(
                value.span(),
                key,
                format!(
                    "expected an integer from 1 to {max}, found {}",
                    value.get_ref()
                ),
            )
        })
}
