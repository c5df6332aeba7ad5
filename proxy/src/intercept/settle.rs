//! The response side of an intercepted request: forward it (SSE chunk by chunk, as it arrives),
//! learn what it cost, and settle the reservation — also when the client went away.
//!
//! The cost comes from `usage.cost` (JSON body or last SSE event); without it, from
//! `GET /api/v1/generation?id=` with backoff (the record appears seconds later); failing that,
//! the reservation's worst case. A 4xx from the upstream, or a request that never reached it,
//! generated nothing and costs nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tollgate_policy::Endpoint;

use super::gateway::State;
use crate::enforce::Refusal;
use crate::spend::sse::SseParser;
use crate::spend::usage::{self, ResponseSummary};
use crate::spend::{Ledger, Micros, Reservation, Settlement, SettlementSource};

/// The response body type of every gateway response.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Largest non-streaming response body read into memory.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Generation lookups: first wait, doubled each time, and how many tries.
const LOOKUP_FIRST_WAIT: Duration = Duration::from_millis(250);
const LOOKUP_TRIES: u32 = 7;
/// Test-only override of [`LOOKUP_FIRST_WAIT`] in milliseconds (not documented: the schedule
/// is not a knob), so the give-up path can be tested without ~30 s of real backoff.
const LOOKUP_FIRST_WAIT_ENV: &str = "TOLLGATE_TEST_LOOKUP_FIRST_WAIT_MS";
/// Response headers passed back to the agent; the rest (cookies, upstream internals) are dropped.
const RETURNED_HEADERS: [&str; 3] = ["content-type", "cache-control", "x-generation-id"];

/// The first lookup wait: [`LOOKUP_FIRST_WAIT`] unless a test set [`LOOKUP_FIRST_WAIT_ENV`].
fn lookup_first_wait() -> Duration {
    static WAIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        std::env::var(LOOKUP_FIRST_WAIT_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(LOOKUP_FIRST_WAIT, Duration::from_millis)
    })
}

/// What the settlement needs to know about the request.
pub struct Metered {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The requested model (the ledger's key); empty for free endpoints.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// When the request arrived.
    pub started: Instant,
    /// The Authorization sent upstream (the generation lookup needs the same key).
    pub auth: HeaderValue,
    /// The concurrency slot, held until the upstream response is done (not through lookups).
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A fixed body as the gateway's body type.
pub fn full(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(|b| b.map_err(|never| match never {}).boxed())
}

/// `GET /api/v1/usage`: the reference's usage JSON.
pub fn usage_response(ledger: &Ledger) -> Response<Body> {
    let body = serde_json::to_vec(&ledger.usage()).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    full(response)
}

/// Forwards a request that costs nothing (GET /api/v1/models).
pub async fn forward_free(
    state: Arc<State>,
    request: Request<Full<Bytes>>,
    m: Metered,
) -> Response<Body> {
    let timeout = state.policy.load().gateway.read_timeout;
    match tokio::time::timeout(timeout, state.client.request(request)).await {
        Ok(Ok(response)) => {
            let (parts, body) = response.into_parts();
            let limited = Limited::new(body, MAX_RESPONSE).collect();
            match tokio::time::timeout(timeout, limited).await {
                Ok(Ok(bytes)) => respond(parts.status, &parts.headers, bytes.to_bytes()),
                _ => upstream_failure(StatusCode::BAD_GATEWAY, "upstream response failed"),
            }
        }
        _ => {
            drop(m);
            upstream_failure(StatusCode::BAD_GATEWAY, "upstream unavailable")
        }
    }
}

/// Forwards a priced request and settles its reservation, whatever happens to the client.
pub async fn forward_metered(
    state: Arc<State>,
    request: Request<Full<Bytes>>,
    reservation: Reservation,
    m: Metered,
) -> Response<Body> {
    let read_timeout = state.policy.load().gateway.read_timeout;
    let sent = Instant::now();
    let response = match tokio::time::timeout(read_timeout, state.client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            // A connect failure never reached the upstream; anything later may have generated.
            let summary = ResponseSummary::default();
            let status = StatusCode::BAD_GATEWAY;
            if error.is_connect() {
                let s = Settlement::new(Micros(0), SettlementSource::NotGenerated, status.as_u16());
                finish(
                    &state,
                    reservation,
                    s,
                    &summary,
                    &m,
                    Some(format!("upstream connect failed: {error}")),
                );
            } else {
                let note = format!("upstream request failed: {error}");
                tokio::spawn(settle(
                    state.clone(),
                    reservation,
                    summary,
                    status,
                    None,
                    m,
                    Some(note),
                ));
            }
            return upstream_failure(status, "upstream unavailable");
        }
        Err(_) => {
            let note = Some("no response headers within the read timeout".to_owned());
            let status = StatusCode::GATEWAY_TIMEOUT;
            tokio::spawn(settle(
                state.clone(),
                reservation,
                ResponseSummary::default(),
                status,
                None,
                m,
                note,
            ));
            return upstream_failure(status, "upstream timed out");
        }
    };
    state
        .metrics
        .upstream_ttfb
        .observe(sent.elapsed().as_secs_f64());
    let (parts, body) = response.into_parts();
    let generation_id = parts
        .headers
        .get("x-generation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        let (tx, rx) = mpsc::channel(32);
        let pump = Pump {
            state: state.clone(),
            status: parts.status,
            generation_id,
            read_timeout,
        };
        tokio::spawn(pump.run(body, tx, reservation, m, sent));
        let mut response = Response::new(ChannelBody { rx }.boxed());
        *response.status_mut() = parts.status;
        copy_headers(&parts.headers, response.headers_mut());
        return response;
    }
    let collected =
        tokio::time::timeout(read_timeout, Limited::new(body, MAX_RESPONSE).collect()).await;
    state
        .metrics
        .upstream_latency
        .observe(sent.elapsed().as_secs_f64());
    let bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        _ => {
            let note = Some("the upstream response body failed or timed out".to_owned());
            tokio::spawn(settle(
                state.clone(),
                reservation,
                ResponseSummary::default(),
                parts.status,
                generation_id,
                m,
                note,
            ));
            return upstream_failure(StatusCode::BAD_GATEWAY, "upstream response failed");
        }
    };
    let summary = usage::parse_response(&bytes).unwrap_or_default();
    if let Some(cost) = summary.usage.as_ref().and_then(|u| u.cost) {
        // The common case settles inline: a spawned task would wake another thread per request.
        let mut m = m;
        drop(m.permit.take());
        let s = Settlement::new(cost, SettlementSource::Usage, parts.status.as_u16());
        finish(&state, reservation, s, &summary, &m, None);
    } else {
        tokio::spawn(settle(
            state.clone(),
            reservation,
            summary,
            parts.status,
            generation_id,
            m,
            None,
        ));
    }
    respond(parts.status, &parts.headers, bytes)
}

/// Drives an SSE response: every chunk goes to the client as it arrives and, as a copy, to the
/// usage parser. If the client leaves, the upstream is dropped (stopping the generation) and the
/// request is settled from the generation record.
struct Pump {
    state: Arc<State>,
    status: StatusCode,
    generation_id: Option<String>,
    read_timeout: Duration,
}

impl Pump {
    async fn run(
        self,
        mut body: Incoming,
        tx: mpsc::Sender<Chunk>,
        reservation: Reservation,
        m: Metered,
        sent: Instant,
    ) {
        let mut parser = SseParser::new();
        let mut note = None;
        loop {
            let next = tokio::select! {
                // A client that hangs up while the upstream is silent is noticed at once.
                _ = tx.closed() => {
                    note = Some("client disconnected mid-stream".to_owned());
                    break;
                }
                next = tokio::time::timeout(self.read_timeout, body.frame()) => next,
            };
            match next {
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    parser.feed(&data);
                    if tx.send(Ok(data)).await.is_err() {
                        note = Some("client disconnected mid-stream".to_owned());
                        break;
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    let message = format!("upstream stream failed: {error}");
                    // Pass the break on: a clean end would pass a truncated answer off as whole.
                    let _ = tx.send(Err(std::io::Error::other(message.clone()))).await;
                    note = Some(message);
                    break;
                }
                Err(_) => {
                    let message = "upstream stream stalled past the read timeout".to_owned();
                    let _ = tx.send(Err(std::io::Error::other(message.clone()))).await;
                    note = Some(message);
                    break;
                }
            }
        }
        drop(body);
        drop(tx);
        self.state
            .metrics
            .upstream_latency
            .observe(sent.elapsed().as_secs_f64());
        let summary = parser.finish();
        if summary.overflowed {
            note.get_or_insert_with(|| "stream event too large to parse".to_owned());
        }
        settle(
            self.state,
            reservation,
            summary.response,
            self.status,
            self.generation_id,
            m,
            note,
        )
        .await;
    }
}

/// Settles from the usage if the response had one, else from the generation record, else at
/// the worst case.
async fn settle(
    state: Arc<State>,
    reservation: Reservation,
    summary: ResponseSummary,
    status: StatusCode,
    generation_id: Option<String>,
    mut m: Metered,
    note: Option<String>,
) {
    // The upstream exchange is over: free the slot before a lookup that may take seconds.
    drop(m.permit.take());
    let code = status.as_u16();
    if let Some(cost) = summary.usage.as_ref().and_then(|u| u.cost) {
        let s = Settlement::new(cost, SettlementSource::Usage, code);
        return finish(&state, reservation, s, &summary, &m, note);
    }
    let id = generation_id.or_else(|| summary.id.clone());
    if status.is_client_error() && id.is_none() {
        // Refused by the upstream before generating (bad request, rate limit, no credit).
        let s = Settlement::new(Micros(0), SettlementSource::NotGenerated, code);
        return finish(&state, reservation, s, &summary, &m, note);
    }
    if let Some(id) = id
        && let Some(generation) = lookup_generation(&state, &id, &m.auth).await
    {
        let mut s = Settlement::new(generation.cost, SettlementSource::Generation, code);
        s.prompt_tokens = generation.prompt_tokens;
        s.completion_tokens = generation.completion_tokens;
        s.routed_model = generation.model;
        s.provider = generation.provider;
        s.generation_id = Some(id);
        return finish(&state, reservation, s, &summary, &m, note);
    }
    let worst = Settlement::new(reservation.amount(), SettlementSource::WorstCase, code);
    finish(&state, reservation, worst, &summary, &m, note);
}

/// Charges the settlement, counts it and writes the request's one log line.
fn finish(
    state: &State,
    reservation: Reservation,
    mut s: Settlement,
    summary: &ResponseSummary,
    m: &Metered,
    note: Option<String>,
) {
    let usage = summary.usage.as_ref();
    s.prompt_tokens = s.prompt_tokens.or(usage.and_then(|u| u.prompt_tokens));
    s.completion_tokens = s
        .completion_tokens
        .or(usage.and_then(|u| u.completion_tokens));
    s.routed_model = s.routed_model.take().or_else(|| summary.model.clone());
    s.provider = s.provider.take().or_else(|| summary.provider.clone());
    s.generation_id = s.generation_id.take().or_else(|| summary.id.clone());
    let upstream_error = summary.error.as_ref().map(|e| {
        let code = e.code.as_deref().unwrap_or("?");
        format!(
            "upstream error {code}: {}",
            e.message.as_deref().unwrap_or("")
        )
    });
    s.error = upstream_error.or(note);
    s.latency = Some(m.started.elapsed());
    let (source, cost, status, error) = (s.source, s.cost, s.status_code, s.error.clone());
    let settled = reservation.settle(s);
    let model_label = state.spend_metrics.model_label(&m.model);
    state
        .metrics
        .llm_requests
        .with_label_values(&[model_label, &status.to_string()])
        .inc();
    tracing::info!(
        target: "tollgate::request",
        endpoint = m.endpoint.name(),
        model = %m.model,
        stream = m.stream,
        status,
        cost_usd = %cost,
        charged_usd = %settled.charged,
        remaining_usd = %settled.remaining,
        source = source.as_str(),
        latency_ms = m.started.elapsed().as_millis() as u64,
        error = error.as_deref().unwrap_or("-"),
        "request"
    );
    if let Some(evidence) = state.evidence.get() {
        let (charged, over) = (settled.charged.0, settled.overcharge.0);
        evidence.llm(Some(&m.model), status, "forwarded", charged, over);
    }
}

/// `GET /api/v1/generation?id=` with backoff; `None` when no cost could be learned in time.
async fn lookup_generation(
    state: &State,
    id: &str,
    auth: &HeaderValue,
) -> Option<usage::GenerationCost> {
    let policy = state.policy.load_full();
    let g = &policy.gateway;
    let query: String = url_escape(id);
    let mut wait = lookup_first_wait();
    for _ in 0..LOOKUP_TRIES {
        tokio::time::sleep(wait).await;
        wait *= 2;
        let request = Request::get(g.upstream.url(&format!("/api/v1/generation?id={query}")))
            .header(header::AUTHORIZATION, auth.clone())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let Ok(Ok(response)) =
            tokio::time::timeout(g.read_timeout, state.client.request(request)).await
        else {
            continue;
        };
        if !response.status().is_success() {
            continue;
        }
        let Ok(Ok(body)) = tokio::time::timeout(
            g.read_timeout,
            Limited::new(response.into_body(), 1 << 20).collect(),
        )
        .await
        else {
            continue;
        };
        if let Some(cost) = usage::parse_generation(&body.to_bytes()) {
            return Some(cost);
        }
    }
    None
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn respond(status: StatusCode, headers: &HeaderMap, bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    copy_headers(headers, response.headers_mut());
    full(response)
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in RETURNED_HEADERS {
        if let Some(value) = from.get(name) {
            to.insert(name, value.clone());
        }
    }
}

fn upstream_failure(status: StatusCode, message: &str) -> Response<Body> {
    full(Refusal::new(status, "upstream", message).response())
}

/// One chunk of a streamed response, or the error that broke the upstream stream.
type Chunk = Result<Bytes, std::io::Error>;

/// A response body fed chunk by chunk from the pump; dropping it (the client left) closes the
/// pump's channel. An error chunk aborts the response (no clean end for a broken stream).
struct ChannelBody {
    rx: mpsc::Receiver<Chunk>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| data.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
