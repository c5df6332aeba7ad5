//! Reading the admin endpoint without an HTTP client: a raw HTTP/1.x response split into status
//! and body, and sample values picked out of the Prometheus text format.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `method path` (no body, `Connection: close`) over `stream` to the server at `addr`, read to
/// the close within 5 s: (status, body). The admin and usage ports' raw client.
pub async fn http_request(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(u16, String)> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(req.as_bytes()).await?;
        stream.read_to_end(&mut raw).await
    })
    .await
    .with_context(|| format!("{method} {path} on {addr} timed out"))??;
    parse_http_response(&raw).with_context(|| format!("{method} {path} on {addr}"))
}

/// Splits a raw HTTP/1.x response into (status, body), undoing chunked encoding.
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").context("chunk size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok((status, out));
        }
        out.push_str(after.get(..size).context("chunk shorter than its size")?);
        rest = after.get(size + 2..).context("chunk without CRLF")?;
    }
}

/// Prometheus text format: the sum of `name` over series whose labels include every pair in
/// `labels`; `None` when no series matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = split_sample(line) else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// Whether the exposition declares metric family `name` (`# TYPE name ...`); a histogram's
/// `_bucket`, `_sum` and `_count` series belong to their base family.
pub fn family_declared(text: &str, name: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    text.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("#")
            && words.next() == Some("TYPE")
            && words.next().is_some_and(|n| n == name || n == base)
    })
}

fn split_sample(line: &str) -> Option<(&str, f64)> {
    // `name{a="b c"} 1.5 [timestamp]`: the value follows the closing brace or the name.
    let end = match line.find('{') {
        Some(_) => line.rfind('}')? + 1,
        None => line.find(char::is_whitespace)?,
    };
    let (series, rest) = line.split_at(end);
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((series, value))
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP tollgate_connections_total Connections by route and reason.
# TYPE tollgate_connections_total counter
tollgate_connections_total{route="tunnel",reason="allow-listed"} 3
tollgate_connections_total{route="reject",reason="not-allow-listed"} 2
tollgate_connections_total{reason="denied",route="reject"} 1
tollgate_open_connections 0
tollgate_build_info{version="0.1.0",commit="a\"b"} 1
# TYPE tollgate_connection_duration_seconds histogram
tollgate_connection_duration_seconds_bucket{le="+Inf"} 6
"#;

    #[test]
    fn metric_value_matches_label_subsets() {
        let v = |n, l: &[(&str, &str)]| metric_value(SAMPLE, n, l);
        assert_eq!(
            v("tollgate_connections_total", &[("route", "tunnel")]),
            Some(3.0)
        );
        assert_eq!(
            v("tollgate_connections_total", &[("route", "reject")]),
            Some(3.0)
        );
        assert_eq!(v("tollgate_connections_total", &[]), Some(6.0));
        assert_eq!(
            v("tollgate_connections_total", &[("reason", "denied")]),
            Some(1.0)
        );
        assert_eq!(
            v("tollgate_connections_total", &[("reason", "timeout")]),
            None
        );
        assert_eq!(v("tollgate_open_connections", &[]), Some(0.0));
        assert_eq!(v("tollgate_build_info", &[("commit", "a\"b")]), Some(1.0));
        assert_eq!(
            v(
                "tollgate_connection_duration_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(6.0)
        );
        assert_eq!(v("tollgate_connections", &[]), None);
        assert!(family_declared(SAMPLE, "tollgate_connections_total"));
        assert!(!family_declared(SAMPLE, "tollgate_connections"));
        assert!(!family_declared(SAMPLE, "tollgate_open_connections"));
    }

    #[test]
    fn chunked_responses_are_decoded() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(raw).unwrap(),
            (200, "hello world".to_string())
        );
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(parse_http_response(raw).unwrap(), (503, "no".to_string()));
    }
}
