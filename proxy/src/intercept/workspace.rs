//! The OpenRouter workspace privacy check. The workspace's settings are read in the background
//! with the management key (never on the request path), and requests are refused while any
//! logging or data-sharing flag is on (403) or while the last good read is too old (503).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use super::state::{State, read_secret};
use crate::upstream;

/// The flags that must all be false for requests to pass.
pub const PRIVACY_FLAGS: [&str; 3] = [
    "is_observability_io_logging_enabled",
    "is_observability_broadcast_enabled",
    "is_data_discount_logging_enabled",
];
/// How soon to retry after a failed read (the staleness limit decides when requests stop).
const RETRY: Duration = Duration::from_secs(5);

/// Reads the workspace every `refresh` until `shutdown`.
pub async fn poll(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let wait = match read_once(&state).await {
            Ok(Some(wait)) => wait,
            Ok(None) => RETRY, // not configured (a reload may configure it)
            Err(error) => {
                tracing::warn!(%error, "workspace privacy check failed");
                RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn read_once(state: &State) -> Result<Option<Duration>, String> {
    let policy = state.policy.load_full();
    let ws = &policy.gateway.workspace;
    let Some(id) = ws.enabled() else {
        return Ok(None);
    };
    let key = read_secret("management key", &ws.management_key).map_err(|e| e.to_string())?;
    let request = Request::get(
        policy
            .gateway
            .upstream
            .url(&format!("/api/v1/workspaces/{id}")),
    )
    .header(header::AUTHORIZATION, format!("Bearer {key}"))
    .body(Full::new(Bytes::new()))
    .map_err(|_| "cannot build the request".to_owned())?;
    let timeout = policy.gateway.read_timeout.min(Duration::from_secs(30));
    let (parts, body) = upstream::fetch(&state.client, request, timeout, 1 << 20)
        .await
        .map_err(|e| e.to_string())?;
    let status = parts.status;
    if !status.is_success() {
        return Err(format!("upstream answered {status}"));
    }
    let flags = enabled_flags(&body)?;
    if !flags.is_empty() {
        tracing::warn!(flags = ?flags, "workspace has data logging enabled; refusing LLM requests");
    }
    state.workspace.record(flags);
    Ok(Some(ws.refresh))
}

/// The privacy flags that are on; a missing or non-boolean flag counts as on (fail closed).
fn enabled_flags(body: &[u8]) -> Result<Vec<&'static str>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    let data = value.get("data").unwrap_or(&value);
    if !data.is_object() {
        return Err("no workspace object in the response".into());
    }
    Ok(PRIVACY_FLAGS
        .into_iter()
        .filter(|flag| data.get(*flag) != Some(&serde_json::Value::Bool(false)))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flags_fail_closed() {
        let safe = br#"{"data":{"is_observability_io_logging_enabled":false,"is_observability_broadcast_enabled":false,"is_data_discount_logging_enabled":false}}"#;
        assert!(enabled_flags(safe).unwrap().is_empty());
        let one = br#"{"data":{"is_observability_io_logging_enabled":true,"is_observability_broadcast_enabled":false,"is_data_discount_logging_enabled":false}}"#;
        assert_eq!(
            enabled_flags(one).unwrap(),
            vec!["is_observability_io_logging_enabled"]
        );
        let missing = br#"{"data":{"is_observability_io_logging_enabled":false}}"#;
        assert_eq!(enabled_flags(missing).unwrap().len(), 2);
        assert!(enabled_flags(b"[]").is_err());
        assert!(enabled_flags(b"nope").is_err());
    }
}
