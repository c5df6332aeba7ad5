//! `PolicyError` and the translation of toml/serde errors into it: a line and column, the key path
//! (`tunnel.allow[1]`, `hosts."pypi.org".pin[0]`), and a short lowercase message.

use std::fmt::{self, Write as _};
use std::ops::Range;

use serde_path_to_error::Segment;

/// A policy that could not be loaded: where, which key, and what was wrong.
///
/// Displays as `<origin>:<line>:<column>: <key>: <message>`, leaving out the location when the
/// line is 0 and the key when it is empty, so editors and terminals can jump to it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyError {
    /// The file path, or `<embedded>`.
    pub origin: String,
    /// 1-based line; 0 when the error is not about a place in the text (e.g. unreadable file).
    pub line: usize,
    /// 1-based column in characters; 0 when `line` is 0.
    pub column: usize,
    /// Key path such as `tunnel.allow[1]`; empty when the error is not about one key.
    pub key: String,
    /// What was expected and what was found, in short lowercase words.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// The text being compiled and its name: everything needed to turn a span into a `PolicyError`.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub text: &'a str,
    pub origin: &'a str,
}

impl Source<'_> {
    /// An error located at the start of `span`.
    pub fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        PolicyError {
            origin: self.origin.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The 1-based line of byte `offset`, for messages that point at a second place.
    pub fn line(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// An error with no place in the text.
    pub fn unlocated(&self, message: impl Into<String>) -> PolicyError {
        PolicyError {
            origin: self.origin.to_owned(),
            line: 0,
            column: 0,
            key: String::new(),
            message: message.into(),
        }
    }

    /// A TOML syntax error (the text is not TOML at all).
    pub fn syntax(&self, err: &toml::de::Error) -> PolicyError {
        let message = format!("invalid toml: {}", err.message());
        match err.span() {
            Some(span) => self.error(span, "", message),
            None => self.unlocated(message),
        }
    }

    /// A schema error from serde: unknown key, wrong type, missing key.
    pub fn schema(&self, err: &serde_path_to_error::Error<toml::de::Error>) -> PolicyError {
        let mut path: Vec<&Segment> = err
            .path()
            .iter()
            // Spanned wraps a value in a private struct; that is not part of the user's key path.
            .filter(|s| !matches!(s, Segment::Map { key } if key.starts_with("$__serde_spanned")))
            .collect();
        let inner = err.inner();
        let message = translate(inner.message());
        // "unknown key `x`" already names x: point the key at the table that does not know it.
        if inner.message().starts_with("unknown field") {
            path.pop();
        }
        let key = format_path(&path);
        match inner.span() {
            Some(span) => self.error(span, key, message),
            None => PolicyError {
                key,
                ..self.unlocated(message)
            },
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A key as it would be written in TOML: bare when it can be, quoted otherwise.
pub(crate) fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn format_path(path: &[&Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]"); // writing to a String cannot fail
            }
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(key));
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// Rewrites serde's wording into the policy's: "key" not "field", "table"/"array" not
/// "map"/"sequence", and "expected X, found Y" in that order.
fn translate(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field") {
        return format!("unknown key{rest}");
    }
    if message == "missing field `version`" {
        return "missing key `version`, expected `version = 1` at the top of the file".to_owned();
    }
    if let Some(rest) = message.strip_prefix("missing field") {
        return format!("missing key{rest}");
    }
    // No let-chains: the workspace's rust-version (1.85) predates them.
    let invalid_type = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "));
    if let Some((found, expected)) = invalid_type {
        return format!(
            "expected {}, found {}",
            type_name(expected),
            type_name(found)
        );
    }
    message.to_owned()
}

fn type_name(serde_name: &str) -> String {
    let name = match serde_name {
        "a sequence" | "sequence" => "an array",
        "map" | "a map" => "a table",
        "i64" | "u16" | "an integer" => "an integer",
        "boolean" => "a boolean",
        other if other.starts_with("struct ") => "a table",
        other if other.starts_with("string ") => return other.to_owned(),
        other => other,
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let text = "ab\ncé\nx";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 6), (2, 3)); // after the two-byte 'é'
        assert_eq!(line_col(text, 100), (3, 2));
    }

    #[test]
    fn display_leaves_out_what_is_unknown() {
        let mut e = PolicyError {
            origin: "p.toml".into(),
            line: 3,
            column: 7,
            key: "tunnel.allow[1]".into(),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "p.toml:3:7: tunnel.allow[1]: bad");
        e.key.clear();
        assert_eq!(e.to_string(), "p.toml:3:7: bad");
        e.line = 0;
        assert_eq!(e.to_string(), "p.toml: bad");
    }

    #[test]
    fn keys_are_quoted_only_when_needed() {
        assert_eq!(key_segment("tunnel"), "tunnel");
        assert_eq!(key_segment("pypi.org"), "\"pypi.org\"");
        assert_eq!(key_segment("*.x"), "\"*.x\"");
    }

    #[test]
    fn serde_wording_is_translated() {
        assert_eq!(
            translate("invalid type: string \"a\", expected a sequence"),
            "expected an array, found string \"a\""
        );
        assert_eq!(
            translate("invalid type: integer `3`, expected a string"),
            "expected a string, found integer `3`"
        );
        assert_eq!(
            translate("unknown field `x`, expected `a`"),
            "unknown key `x`, expected `a`"
        );
    }
}
