//! Pure parsers for the gateway's values, shared by the file (`compile`) and the environment
//! (`env`): each returns the value or a short lowercase message that says what was expected. The
//! callers add the location (a line and key, or the variable's name).

use std::path::PathBuf;

use super::{MAX_MAX_BODY, Upstream};

/// A comma-separated list, as the reference's variables write them: entries trimmed, empty ones
/// (`"a,,b"`, a trailing comma) skipped.
pub(crate) fn comma_list(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// An absolute path: a relative one would depend on the proxy's working directory.
pub(crate) fn absolute_path(text: &str) -> Result<PathBuf, String> {
    if !text.starts_with('/') || text.contains('\0') {
        return Err(format!(
            "expected an absolute path such as \"/etc/tollgate/ca.pem\", found {text:?}"
        ));
    }
    Ok(PathBuf::from(text))
}

/// A POSIX environment variable name.
pub(crate) fn env_var_name(text: &str) -> Result<String, String> {
    let mut bytes = text.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && text.len() <= 128;
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected an environment variable name such as \"OPENROUTER_API_KEY\", found {text:?}"
        ))
    }
}

/// 64 hexadecimal characters, either case. The text is never echoed: someone may have pasted the
/// key itself where its digest belongs.
pub(crate) fn sha256_hex(text: &str) -> Result<[u8; 32], String> {
    const EXPECTED: &str = "expected the key's sha-256 as 64 hexadecimal characters";
    if text.len() != 64 {
        return Err(format!(
            "{EXPECTED}, found {} characters (not shown)",
            text.chars().count()
        ));
    }
    let mut digest = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hi = hex_digit(pair[0]);
        let lo = hex_digit(pair[1]);
        match (hi, lo) {
            (Some(hi), Some(lo)) => digest[i] = hi << 4 | lo,
            _ => return Err(format!("{EXPECTED}, found other characters (not shown)")),
        }
    }
    Ok(digest)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A workspace id: it becomes a path segment of `/api/v1/workspaces/{id}`, so only characters that
/// cannot change the path.
pub(crate) fn workspace_id(text: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a workspace id of letters, digits, '-' and '_', found {text:?}"
        ))
    }
}

/// The evaluation run id: free text for the usage file, but one line of it.
pub(crate) fn run_id(text: &str) -> Result<String, String> {
    if text.len() > 256 || text.chars().any(char::is_control) {
        return Err(format!(
            "expected a run id of at most 256 characters without control characters, found {text:?}"
        ));
    }
    Ok(text.to_owned())
}

/// A provider name for `provider.order` (`"anthropic"`, `"google-vertex"`, `"deepinfra/turbo"`).
pub(crate) fn provider(text: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&text.len())
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a provider name such as \"anthropic\" (no spaces or commas), found {text:?}"
        ))
    }
}

/// An exact model id (a table key): a pattern's rules, and no wildcard. Lowercased.
pub(crate) fn model_id(text: &str) -> Result<String, String> {
    let pattern = super::ModelPattern::parse(text)?;
    if !pattern.is_exact() {
        return Err(format!(
            "expected an exact model id such as \"openai/gpt-4o\", found the pattern {text:?}"
        ));
    }
    Ok(pattern.to_string())
}

/// The reference's booleans: `true`/`false`/`1`/`0`, any case.
pub(crate) fn bool_word(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!(
            "expected \"true\", \"false\", \"1\" or \"0\", found {text:?}"
        )),
    }
}

/// A size: a number of bytes, optionally with a binary unit (`"512KiB"`, `"10 MiB"`, `"1GiB"`);
/// from 1 byte to 1 GiB.
pub(crate) fn byte_size(text: &str) -> Result<usize, String> {
    let expected = || {
        format!(
            "expected a size such as 10485760 or \"10MiB\" (units B, KiB, MiB, GiB), found {text:?}"
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(expected()),
    };
    let number: u64 = number.parse().map_err(|_| expected())?;
    bytes(number.checked_mul(multiplier))
}

/// Checks a byte count is in 1 byte ..= 1 GiB.
pub(crate) fn bytes(value: Option<u64>) -> Result<usize, String> {
    match value.and_then(|v| usize::try_from(v).ok()) {
        Some(v) if (1..=MAX_MAX_BODY).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a size from 1 byte to 1GiB ({MAX_MAX_BODY} bytes)"
        )),
    }
}

/// The upstream base URL: `https://host[:port][/prefix]`. A trailing `/api/v1` is the API root
/// that OpenAI-style clients put in their base URL, and is dropped: the gateway forwards the
/// request's own full path (`/api/v1/chat/completions`), so `https://openrouter.ai/api/v1` and
/// `https://openrouter.ai` mean the same upstream.
pub(crate) fn upstream(text: &str) -> Result<Upstream, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!(
            "expected a url such as \"https://openrouter.ai\", found {text:?}"
        ));
    };
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "expected an https url (the gateway forwards only over tls), found {text:?}"
        ));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        // Not echoed: user info is where someone would paste a key.
        return Err("expected no user name or password in the url (not shown); keys belong in [intercept.auth]".into());
    }
    if path.contains(['?', '#']) || authority.contains(['?', '#']) {
        return Err(format!(
            "expected a base url without query or fragment, found {text:?}"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains([':', '[']) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("expected a port from 1 to 65535 in the url, found {text:?}")
                })?;
            (host, port)
        }
        _ => (authority, 443),
    };
    let host = crate::host::normalize_host(host).map_err(|e| format!("{e} in the url {text:?}"))?;
    let mut prefix = path.trim_end_matches('/');
    prefix = prefix.strip_suffix("/api/v1").unwrap_or(prefix);
    let path_ok = prefix.split('/').skip(1).all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    });
    if !path_ok {
        return Err(format!(
            "expected a path of plain segments such as \"/proxy\" in the url, found {text:?}"
        ));
    }
    Ok(Upstream {
        host,
        port,
        path_prefix: prefix.to_owned(),
    })
}
