//! One intercepted HTTP request: enforce the policy, price it and reserve its worst case, then
//! forward it (see [`settle`](super::settle) for the response and the settlement).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tollgate_policy::GatewaySettings;

use super::body_budget::{BudgetError, Held, ReadError};
use super::record::{self, Exit, Kind, RequestInfo};
use super::settle::{self, Body, Metered};
use super::state::State;
use crate::enforce::{self, FORWARDED_HEADERS, Reason, Refusal};
use crate::spend::estimate::{self, OutputField, RequestShape};
use crate::spend::{EstimateError, Ledger, RequestMeta, ReserveError};

/// How long a request waits for a concurrency slot before it is refused.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one request; refusals become OpenRouter-shaped errors. Every request ends in
/// [`record`](super::record::record): here for refusals and the usage endpoint, in
/// `settle` for forwarded requests.
pub async fn serve(state: Arc<State>, sni: Arc<str>, req: Request<Incoming>) -> Response<Body> {
    let info = Arc::new(RequestInfo {
        sni,
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        started: Instant::now(),
    });
    let (parts, mut body) = req.into_parts();
    match admit(&state, &info, parts, &mut body).await {
        Ok(response) => response,
        Err(refusal) => {
            record::record(&state, &info, &Exit::refused(&refusal));
            // The refusal may come before the body was read. Over h2, an agent still sending
            // it may not read an early answer at all (curl 7.88 fails the upload with "(92)
            // Stream error in the HTTP/2 framing layer"): read and discard what it sends, within
            // bounds, so it finishes sending and reads the refusal. What is left unread is
            // dropped after the answer, which h2 turns into the RST_STREAM(NO_ERROR) RFC 9113
            // §8.1 provides for an early response (dropped before, it was a CANCEL).
            drain(&mut body).await;
            settle::full(refusal.response()).map(|answer| {
                AfterAnswer {
                    answer,
                    _request: body,
                }
                .boxed()
            })
        }
    }
}

/// At most this much of a refused request's body is read and discarded before the refusal.
const DRAIN_BYTES: usize = 1 << 20;
/// For at most this long.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads and discards what remains of a refused request's body, within [`DRAIN_BYTES`] and
/// [`DRAIN_WAIT`] (a refusal is never held up by more).
async fn drain(body: &mut Incoming) {
    let discard = async {
        let mut seen = 0usize;
        while seen <= DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_WAIT, discard).await;
}

/// A response body that keeps the request's unread body until the response is sent.
struct AfterAnswer {
    answer: Body,
    _request: Incoming,
}

impl hyper::body::Body for AfterAnswer {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.answer).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.answer.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.answer.size_hint()
    }
}

async fn admit(
    state: &Arc<State>,
    info: &Arc<RequestInfo>,
    parts: http::request::Parts,
    body: &mut Incoming,
) -> Result<Response<Body>, Refusal> {
    let sni = &*info.sni;
    let policy = state.policy.load_full();
    let g = &policy.gateway;
    enforce::check_authority(&parts.uri, &parts.headers, sni)?;
    if parts.method == Method::GET && parts.uri.path() == "/api/v1/usage" {
        let response = settle::usage_response(&state.ledger);
        record::record(
            state,
            info,
            &Exit::bare(Kind::Usage, response.status().as_u16()),
        );
        return Ok(response);
    }
    let endpoint = enforce::endpoint(&parts.method, parts.uri.path(), g)?;
    let auth = enforce::authorize(&parts.headers, g, state.injected_key.as_deref())?;
    state.workspace.check(g)?;
    rate_limit(state, &info.sni)?;
    let permit = slot(state).await?;

    let forward = forward_head(&parts, g, &auth);
    let mut metered = Metered {
        endpoint,
        model: String::new(),
        stream: false,
        request: info.clone(),
        auth,
        permit: Some(permit),
    };
    if !endpoint.has_body() {
        let request = forward
            .body(Full::new(Bytes::new()))
            .map_err(Refusal::internal)?;
        return Ok(settle::forward_free(state.clone(), request, metered).await);
    }

    // Holds its share of the body budget until this request is forwarded (end of scope).
    let bytes = read_body(state, &parts.headers, body, g).await?;
    let admitted = enforce::admit_body(endpoint, &bytes, g)?;
    let output = OutputField::for_path(parts.uri.path());
    let mut value = Value::Object(admitted.body);
    // The upstream reads the body as re-serialised, which can be longer than the agent's
    // (`1e9` becomes `1000000000.0`): bound the prompt by the longer of the two.
    let forwarded_len = serialized_len(&value);
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
    let mut body = Vec::with_capacity(forwarded_len + FORWARD_SLACK);
    serde_json::to_writer(&mut body, &value).map_err(Refusal::internal)?;
    let request = forward
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(Refusal::internal)?;
    metered.model = meta.model;
    metered.stream = admitted.stream;
    Ok(settle::forward_metered(state.clone(), request, reservation, metered).await)
}

/// Room for what [`estimate::apply`] adds to the body (`max_price`, the output cap).
const FORWARD_SLACK: usize = 256;

/// The length `value` serialises to, counted without building the bytes.
fn serialized_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(0, |()| count.0)
}

/// Requests beyond the concurrency cap wait for a slot, for a bounded time.
async fn slot(state: &State) -> Result<OwnedSemaphorePermit, Refusal> {
    let slot = tokio::time::timeout(QUEUE_WAIT, state.concurrency.clone().acquire_owned()).await;
    match slot {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(Refusal::no_slot()),
    }
}

/// The upstream request's head: the same method and path on the policy's upstream, the key to
/// send, and only the headers the gateway forwards.
fn forward_head(
    parts: &http::request::Parts,
    g: &GatewaySettings,
    auth: &http::HeaderValue,
) -> http::request::Builder {
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
    forward
}

fn rate_limit(state: &State, sni: &Arc<str>) -> Result<(), Refusal> {
    match state.limiter.check_key(sni) {
        Ok(()) => Ok(()),
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Err(Refusal::rate_limited(wait.as_secs()))
        }
    }
}

/// Reads a JSON body of at most `max_body` bytes, within the read timeout (a slow client
/// cannot hold a concurrency slot forever), under the in-flight body budget.
async fn read_body(
    state: &State,
    headers: &http::HeaderMap,
    body: &mut Incoming,
    g: &GatewaySettings,
) -> Result<Held, Refusal> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !is_json {
        return Err(Refusal::not_json());
    }
    let too_large = || Refusal::body_too_large(g.max_body);
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
        Ok(Err(ReadError::Budget(BudgetError::Busy))) => Err(Refusal::body_budget_busy()),
        Ok(Err(ReadError::Budget(BudgetError::TooCostly { needed, total }))) => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            format!(
                "checking this request body would take ~{needed} bytes of memory, \
                     more than the gateway's body budget of {total} bytes"
            ),
        )),
        Ok(Err(ReadError::Body(error))) => Err(Refusal::bad_request(format!(
            "reading the body failed: {error}"
        ))),
        Err(_) => Err(Refusal::slow_client()),
    }
}

fn estimate_refusal(error: EstimateError, g: &GatewaySettings) -> Refusal {
    match error {
        EstimateError::Price(e) => Refusal::new(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN),
            Reason::NoPrice,
            e.to_string(),
        ),
        EstimateError::Budget(b) => budget_refusal(&b, g),
        e @ EstimateError::BadField { .. } => Refusal::bad_request(e.to_string()),
        e @ EstimateError::Unbounded { .. } => Refusal::new(
            StatusCode::BAD_REQUEST,
            Reason::UnboundedMedia,
            e.to_string(),
        ),
    }
}

fn budget_refusal(b: &crate::spend::BudgetExceeded, g: &GatewaySettings) -> Refusal {
    Refusal::new(
        StatusCode::from_u16(g.budget.refusal_status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
        Reason::Budget,
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
            Reason::Ledger,
            format!("the spend ledger cannot record this request: {e}"),
        ),
    };
    if refusal.reason == Reason::Budget {
        ledger.record_refusal(meta, refusal.status.as_u16(), &refusal.message);
    }
    refusal
}
