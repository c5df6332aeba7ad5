//! The request policy of the LLM gateway: which endpoint, which credentials, which fields, which
//! models, which providers. Pure functions from a request's parts to either the request to
//! forward or a [`Refusal`] shaped like an OpenRouter error, so every rule is a unit test.

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Map, Value, json};
use tollgate_policy::{Endpoint, GatewaySettings, ProviderPrefs};

mod refusal;
mod served;

pub use refusal::{Reason, Refusal};
pub use served::{ServedKind, Violation, check_served};

/// `Host` (HTTP/1.1) or `:authority` (HTTP/2) must name the host the TLS session was for:
/// otherwise one connection could reach hosts the SNI decision never saw.
pub fn check_authority(uri: &Uri, headers: &HeaderMap, sni: &str) -> Result<(), Refusal> {
    let authority = uri.authority().map(|a| a.host().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(strip_port)
    });
    let host = authority.and_then(|a| tollgate_policy::normalize_host(&a).ok());
    match host {
        Some(host) if host == sni => Ok(()),
        _ => Err(Refusal::misdirected(sni)),
    }
}

fn strip_port(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name.to_owned()
        }
        _ => host.to_owned(),
    }
}

/// The endpoint this method and path name, if the policy enables it.
pub fn endpoint(
    method: &Method,
    path: &str,
    settings: &GatewaySettings,
) -> Result<Endpoint, Refusal> {
    match Endpoint::from_request(method.as_str(), path) {
        Some(e) if settings.endpoints.contains(e) => Ok(e),
        _ => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            Reason::Endpoint,
            format!("{method} {path} is not allowed by the tollgate policy"),
        )),
    }
}

/// Checks the agent's credentials and returns the Authorization header to send upstream: the
/// agent's own (when its hash matches any pin), or the injected key in its place.
pub fn authorize(
    headers: &HeaderMap,
    settings: &GatewaySettings,
    injected: Option<&str>,
) -> Result<HeaderValue, Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            Reason::Unauthenticated,
            "missing Authorization: Bearer token",
        ));
    };
    if let Some(pin) = settings.auth.api_key_sha256 {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        // Compared without early exit: timing must not tell how much of the digest matched.
        let diff = digest
            .as_ref()
            .iter()
            .zip(pin.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                Reason::ApiKey,
                "this API key is not the one this run may use",
            ));
        }
    }
    let key = injected.unwrap_or(token);
    HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            Reason::BadRequest,
            "malformed Authorization header",
        )
    })
}

/// A request body the policy accepted, ready to be priced and forwarded.
#[derive(Clone, Debug, PartialEq)]
pub struct Admitted {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The rewritten JSON body (fields filtered, provider preferences forced).
    pub body: Map<String, Value>,
    /// Every model the request may be served by: `model`, then each `models` entry.
    pub models: Vec<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Fields the allowlist removed, for the log line.
    pub dropped: Vec<String>,
}

/// Parses and rewrites a request body: JSON object only, allowlisted fields only, every
/// model-selecting field checked, the agent's `provider` replaced by the policy's.
pub fn admit_body(
    endpoint: Endpoint,
    bytes: &[u8],
    settings: &GatewaySettings,
) -> Result<Admitted, Refusal> {
    let parsed: Value = serde_json::from_slice(bytes).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            Reason::BadJson,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(object) = parsed else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            Reason::BadJson,
            "request body must be a JSON object",
        ));
    };
    let mut body = Map::with_capacity(object.len() + 1);
    let mut dropped = Vec::new();
    for (field, value) in object {
        if settings.fields.allows(endpoint, &field) {
            body.insert(field, value);
        } else {
            dropped.push(field);
        }
    }
    let models = models_of(&body)?;
    settings
        .models
        .check_all(models.iter().map(String::as_str))
        .map_err(|denied| {
            Refusal::new(
                StatusCode::FORBIDDEN,
                Reason::from(&denied),
                format!("{denied}"),
            )
        })?;
    let stream = matches!(body.get("stream"), Some(Value::Bool(true)));
    if endpoint != Endpoint::Embeddings || !settings.provider.order.is_empty() {
        body.insert(
            "provider".into(),
            provider_object(&settings.provider.for_model(&models[0])),
        );
    } else {
        body.insert("provider".into(), json!({ "zdr": ProviderPrefs::ZDR }));
    }
    Ok(Admitted {
        endpoint,
        body,
        models,
        stream,
        dropped,
    })
}

/// `model` and each `models` entry, in that order; at least one is required (an unnamed model
/// means the account's default, a routing choice the policy never saw).
fn models_of(body: &Map<String, Value>) -> Result<Vec<String>, Refusal> {
    let bad = |m: &str| Refusal::bad_request(m);
    let mut models = Vec::new();
    match body.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) => models.push(m.clone()),
        Some(_) => return Err(bad("`model` must be a string")),
    }
    match body.get("models") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for entry in list {
                let Value::String(m) = entry else {
                    return Err(bad("`models` must be an array of strings"));
                };
                if !models.contains(m) {
                    models.push(m.clone());
                }
            }
        }
        Some(_) => return Err(bad("`models` must be an array of strings")),
    }
    if models.is_empty() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            Reason::NoModel,
            "the request must name a model",
        ));
    }
    Ok(models)
}

fn provider_object(prefs: &ProviderPrefs) -> Value {
    let mut provider = Map::new();
    provider.insert("zdr".into(), Value::Bool(ProviderPrefs::ZDR));
    if !prefs.order.is_empty() {
        provider.insert("order".into(), json!(prefs.order));
    }
    provider.insert("allow_fallbacks".into(), Value::Bool(prefs.allow_fallbacks));
    Value::Object(provider)
}

/// Request headers forwarded upstream; everything else the agent sent is dropped. Not
/// `Content-Type`: the gateway re-serialises the body and sends exactly one
/// `Content-Type: application/json` itself (two would let upstream parsers disagree).
pub const FORWARDED_HEADERS: [&str; 4] =
    ["accept", "http-referer", "x-title", "x-openrouter-title"];

#[cfg(test)]
mod tests;
