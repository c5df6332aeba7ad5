//! One intercepted HTTP request: enforce the policy, price it and reserve its worst case, then
//! forward it (see [`settle`](super::settle) for the response and the settlement).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;
use tollgate_policy::GatewaySettings;

use super::body_budget::{BudgetError, Held, ReadError};
use super::gateway::State;
use super::settle::{self, Body, Metered};
use crate::enforce::{self, FORWARDED_HEADERS, Refusal};
use crate::spend::estimate::{self, OutputField, RequestShape};
use crate::spend::{EstimateError, Ledger, RequestMeta, ReserveError};

/// How long a request waits for a concurrency slot before it is refused.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one request; refusals become OpenRouter-shaped errors, counted and logged.
pub async fn serve(state: Arc<State>, sni: Arc<str>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match admit(&state, &sni, req, started).await {
        Ok(response) => response,
        Err(refusal) => {
            state
                .metrics
                .llm_denials
                .with_label_values(&[refusal.reason])
                .inc();
            tracing::info!(
                target: "tollgate::request",
                sni = %sni,
                method = %method,
                path = %path,
                status = refusal.status.as_u16(),
                reason = refusal.reason,
                error = %refusal.message,
                latency_ms = started.elapsed().as_millis() as u64,
                "request"
            );
            settle::full(refusal.response())
        }
    }
}

async fn admit(
    state: &Arc<State>,
    sni: &str,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<Body>, Refusal> {
    let policy = state.policy.load_full();
    let g = &policy.gateway;
    enforce::check_authority(req.uri(), req.headers(), sni)?;
    if req.method() == Method::GET && req.uri().path() == "/api/v1/usage" {
        return Ok(settle::usage_response(&state.ledger));
    }
    let endpoint = enforce::endpoint(req.method(), req.uri().path(), g)?;
    let auth = enforce::authorize(req.headers(), g, state.injected_key.as_deref())?;
    state.workspace.check(g)?;
    rate_limit(state, sni)?;
    // Requests beyond the cap wait for a slot, for a bounded time.
    let slot = tokio::time::timeout(QUEUE_WAIT, state.concurrency.clone().acquire_owned()).await;
    let permit = match slot {
        Ok(Ok(permit)) => permit,
        _ => {
            let mut r = Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency",
                "too many concurrent requests; no slot freed in time",
            );
            r.retry_after = Some(1);
            return Err(r);
        }
    };

    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let mut forward = Request::builder()
        .method(parts.method.clone())
        .uri(g.upstream.url(path_and_query))
        .header(header::AUTHORIZATION, auth.clone());
    for name in FORWARDED_HEADERS {
        if let Some(value) = parts.headers.get(name) {
            forward = forward.header(name, value);
        }
    }
    let mut metered = Metered {
        endpoint,
        model: String::new(),
        stream: false,
        started,
        auth,
        permit: Some(permit),
    };
    if !endpoint.has_body() {
        let request = forward.body(Full::new(Bytes::new())).map_err(internal)?;
        return Ok(settle::forward_free(state.clone(), request, metered).await);
    }

    // Holds its share of the body budget until this request is forwarded (end of scope).
    let bytes = read_body(state, &parts.headers, body, g).await?;
    let admitted = enforce::admit_body(endpoint, &bytes, g)?;
    let output = OutputField::for_path(parts.uri.path());
    let mut value = Value::Object(admitted.body);
    // The upstream reads the body as re-serialised, which can be longer than the agent's
    // (`1e9` becomes `1000000000.0`): bound the prompt by the longer of the two.
    let forwarded_len = serde_json::to_vec(&value).map_or(0, |v| v.len());
    let shape = RequestShape::from_json(&value, bytes.len().max(forwarded_len), output)
        .map_err(|e| estimate_refusal(e, g))?;
    let meta = RequestMeta {
        endpoint: endpoint.name().to_owned(),
        model: admitted.models[0].clone(),
    };
    let prices = state.prices.load();
    let reserved = state.ledger.reserve(meta.clone(), |remaining| {
        estimate::quote(&shape, &prices, &state.estimate, remaining).map(|q| (q.worst_case, q))
    });
    let (reservation, quote) = reserved.map_err(|e| reserve_refusal(e, g, &state.ledger, &meta))?;
    estimate::apply(&quote, output, &mut value);
    let body = serde_json::to_vec(&value).map_err(|e| internal(e.to_string()))?;
    let request = forward
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(internal)?;
    metered.model = meta.model;
    metered.stream = admitted.stream;
    Ok(settle::forward_metered(state.clone(), request, reservation, metered).await)
}

fn rate_limit(state: &State, sni: &str) -> Result<(), Refusal> {
    match state.limiter.check_key(&sni.to_owned()) {
        Ok(()) => Ok(()),
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut r = Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limit",
                "request rate limit exceeded",
            );
            r.retry_after = Some(wait.as_secs().max(1));
            Err(r)
        }
    }
}

/// Reads a JSON body of at most `max_body` bytes, within the read timeout (a slow client
/// cannot hold a concurrency slot forever), under the in-flight body budget.
async fn read_body(
    state: &State,
    headers: &http::HeaderMap,
    body: Incoming,
    g: &GatewaySettings,
) -> Result<Held, Refusal> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !is_json {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "content-type",
            "request body must be application/json",
        ));
    }
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("request body larger than {} bytes", g.max_body),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > g.max_body as u64) {
        return Err(too_large());
    }
    let declared = declared.and_then(|n| usize::try_from(n).ok());
    let read = state.body_budget.read(body, g.max_body, declared);
    match tokio::time::timeout(g.read_timeout, read).await {
        Ok(Ok(held)) => Ok(held),
        Ok(Err(ReadError::TooLarge)) => Err(too_large()),
        Ok(Err(ReadError::Budget(BudgetError::Busy))) => {
            let mut r = Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "body-budget",
                "too many request bodies in flight; retry shortly",
            );
            r.retry_after = Some(1);
            Err(r)
        }
        Ok(Err(ReadError::Budget(BudgetError::TooCostly { needed, total }))) => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!(
                "checking this request body would take ~{needed} bytes of memory, \
                     more than the gateway's body budget of {total} bytes"
            ),
        )),
        Ok(Err(ReadError::Body(error))) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("reading the body failed: {error}"),
        )),
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "slow-client",
            "request body was not received in time",
        )),
    }
}

fn estimate_refusal(error: EstimateError, g: &GatewaySettings) -> Refusal {
    match error {
        EstimateError::Price(e) => Refusal::new(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN),
            "no-price",
            e.to_string(),
        ),
        EstimateError::Budget(b) => budget_refusal(&b, g),
        e @ EstimateError::BadField { .. } => {
            Refusal::new(StatusCode::BAD_REQUEST, "bad-request", e.to_string())
        }
        e @ EstimateError::Unbounded { .. } => {
            Refusal::new(StatusCode::BAD_REQUEST, "unbounded-media", e.to_string())
        }
    }
}

fn budget_refusal(b: &crate::spend::BudgetExceeded, g: &GatewaySettings) -> Refusal {
    Refusal::new(
        StatusCode::from_u16(g.budget.refusal_status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
        "budget",
        format!(
            "budget exhausted: ${} remaining, this request needs at least ${}",
            b.remaining, b.needed
        ),
    )
}

fn reserve_refusal(
    error: ReserveError<EstimateError>,
    g: &GatewaySettings,
    ledger: &Ledger,
    meta: &RequestMeta,
) -> Refusal {
    let refusal = match error {
        ReserveError::Refused(e) => estimate_refusal(e, g),
        ReserveError::Budget(b) => budget_refusal(&b, g),
        ReserveError::Journal(e) => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger",
            format!("the spend ledger cannot record this request: {e}"),
        ),
    };
    if refusal.reason == "budget" {
        ledger.record_refusal(meta, refusal.status.as_u16(), &refusal.message);
    }
    refusal
}

fn internal(error: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("tollgate: {error}"),
    )
}
