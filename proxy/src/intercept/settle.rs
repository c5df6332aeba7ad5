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
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tollgate_policy::Endpoint;

use super::record::{self, Charge, Exit, Kind, RequestInfo};
use super::state::State;
use crate::enforce::{Refusal, Violation, check_served};
use crate::spend::sse::SseParser;
use crate::spend::usage::{self, ResponseSummary};
use crate::spend::{Ledger, Micros, Reservation, Settlement, SettlementSource};
use crate::upstream::{self, FetchError};

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
    /// Who asked for what, and when (for the request's line).
    pub request: Arc<RequestInfo>,
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
    let fetched = upstream::fetch(&state.client, request, timeout, MAX_RESPONSE).await;
    let mut exit = Exit::bare(Kind::Free, 0);
    exit.endpoint = Some(m.endpoint.name());
    let (response, error) = match fetched {
        Ok((parts, bytes)) => (respond(parts.status, &parts.headers, bytes), None),
        Err(FetchError::Body(_)) => (
            upstream_failure(StatusCode::BAD_GATEWAY, "upstream response failed"),
            Some("upstream response failed"),
        ),
        Err(_) => (
            upstream_failure(StatusCode::BAD_GATEWAY, "upstream unavailable"),
            Some("upstream unavailable"),
        ),
    };
    exit.status = response.status().as_u16();
    exit.error = error;
    record::record(&state, &m.request, &exit);
    response
}

/// Forwards a priced request and settles its reservation, whatever happens to the client.
pub async fn forward_metered(
    state: Arc<State>,
    request: Request<Full<Bytes>>,
    reservation: Reservation,
    m: Metered,
) -> Response<Body> {
    let read_timeout = state.policy.load().gateway.read_timeout;
    let mut pending = Pending::new(state.clone(), reservation, m);
    let sent = Instant::now();
    let (response, lease) = match upstream::send(&state.client, request, read_timeout).await {
        Ok(sent) => sent,
        Err(error) => return unanswered(pending, &error),
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
            status: parts.status,
            generation_id,
            read_timeout,
        };
        lease.detach();
        tokio::spawn(pump.run(body, tx, pending, sent));
        let mut response = Response::new(ChannelBody { rx }.boxed());
        *response.status_mut() = parts.status;
        copy_headers(&parts.headers, response.headers_mut());
        return response;
    }
    let collected = upstream::read_limited(lease, body, MAX_RESPONSE, read_timeout).await;
    state
        .metrics
        .upstream_latency
        .observe(sent.elapsed().as_secs_f64());
    let Ok(bytes) = collected else {
        let note = Some("the upstream response body failed or timed out".to_owned());
        let summary = ResponseSummary::default();
        pending.later(summary, parts.status, generation_id, note);
        return upstream_failure(StatusCode::BAD_GATEWAY, "upstream response failed");
    };
    let summary = usage::parse_response(&bytes).unwrap_or_default();
    let withheld = pending
        .screen(&summary)
        .map(|v| Refusal::served_violation(&v));
    let status = withheld.as_ref().map_or(parts.status, |r| r.status);
    let note = withheld.as_ref().map(|r| r.message.clone());
    if let Some(cost) = summary.usage.as_ref().and_then(|u| u.cost) {
        // The common case settles inline: a spawned task would wake another thread per request.
        let s = Settlement::new(cost, SettlementSource::Usage, status.as_u16());
        pending.now(s, &summary, note);
    } else {
        pending.later(summary, status, generation_id, note);
    }
    match withheld {
        Some(refusal) => full(refusal.response()),
        None => respond(parts.status, &parts.headers, bytes),
    }
}

/// No response head came back: settle (a connect failure never reached the upstream, anything
/// later may have generated) and tell the agent.
fn unanswered(pending: Pending, error: &FetchError) -> Response<Body> {
    let summary = ResponseSummary::default();
    match error {
        FetchError::Timeout => {
            let note = Some("no response headers within the read timeout".to_owned());
            let status = StatusCode::GATEWAY_TIMEOUT;
            pending.later(summary, status, None, note);
            upstream_failure(status, "upstream timed out")
        }
        error => {
            let status = StatusCode::BAD_GATEWAY;
            let cause = match error {
                FetchError::Request(e) => e.to_string(),
                other => other.to_string(),
            };
            if error.is_connect() {
                let s = Settlement::new(Micros(0), SettlementSource::NotGenerated, status.as_u16());
                pending.now(
                    s,
                    &summary,
                    Some(format!("upstream connect failed: {cause}")),
                );
            } else {
                let note = Some(format!("upstream request failed: {cause}"));
                pending.later(summary, status, None, note);
            }
            upstream_failure(status, "upstream unavailable")
        }
    }
}

/// Drives an SSE response: every chunk goes to the client as it arrives and, as a copy, to the
/// usage parser. If the client leaves, the upstream is dropped (stopping the generation) and the
/// request is settled from the generation record.
struct Pump {
    status: StatusCode,
    generation_id: Option<String>,
    read_timeout: Duration,
}

impl Pump {
    async fn run(
        self,
        mut body: Incoming,
        tx: mpsc::Sender<Chunk>,
        mut pending: Pending,
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
                    if let Some(v) = pending.screen(&parser.summary().response) {
                        // Nothing past the chunk that named it reaches the agent.
                        let refusal = Refusal::served_violation(&v);
                        let event = format!("data: {}\n\n", refusal.body());
                        let _ = tx.send(Ok(Bytes::from(event))).await;
                        note = Some(refusal.message);
                        break;
                    }
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
        pending
            .state
            .metrics
            .upstream_latency
            .observe(sent.elapsed().as_secs_f64());
        let summary = parser.finish();
        if summary.overflowed {
            note.get_or_insert_with(|| "stream event too large to parse".to_owned());
        }
        pending
            .settle(summary.response, self.status, self.generation_id, note)
            .await;
    }
}

/// A granted reservation not yet settled, with what settling it needs: settle it [now](Self::now)
/// with a known cost, or [later](Self::later) from the usage, the generation record or the worst
/// case. Every metered request's line is written by its settlement, so no path can forget to
/// settle: dropped unsettled (a cancelled future, a panicking task, a runtime shutting down), it
/// settles at the reserved worst case and still writes the line.
pub struct Pending {
    state: Arc<State>,
    reservation: Option<Reservation>,
    m: Metered,
    /// What served it broke the policy (found by [`Self::screen`] or at settlement).
    violation: Option<Violation>,
    /// The response was withheld from the agent for that violation.
    withheld: bool,
}

impl Pending {
    /// Takes charge of `reservation`.
    pub fn new(state: Arc<State>, reservation: Reservation, m: Metered) -> Self {
        Self {
            state,
            reservation: Some(reservation),
            m,
            violation: None,
            withheld: false,
        }
    }

    /// Checks the model and provider the response named so far against the policy. The first
    /// violation is kept for the request's line; it is returned (once) when the policy says to
    /// withhold the response.
    pub fn screen(&mut self, summary: &ResponseSummary) -> Option<Violation> {
        if self.violation.is_some() || (summary.model.is_none() && summary.provider.is_none()) {
            return None;
        }
        let policy = self.state.policy.load();
        let g = &policy.gateway;
        let (model, provider) = (summary.model.as_deref(), summary.provider.as_deref());
        let v = check_served(g, &self.m.model, model, provider)?;
        self.withheld = g.withhold_served_violations;
        self.violation = Some(v.clone());
        self.withheld.then_some(v)
    }

    /// Settles at once: charges `s` (completed from `summary`), counts it and writes the line.
    pub fn now(mut self, s: Settlement, summary: &ResponseSummary, note: Option<String>) {
        self.charge(s, summary, note);
    }

    /// Settles in a task of its own (a generation lookup may take seconds).
    pub fn later(
        self,
        summary: ResponseSummary,
        status: StatusCode,
        generation_id: Option<String>,
        note: Option<String>,
    ) {
        tokio::spawn(self.settle(summary, status, generation_id, note));
    }

    /// Settles from the usage if the response had one, else from the generation record, else
    /// at the worst case.
    pub async fn settle(
        mut self,
        summary: ResponseSummary,
        status: StatusCode,
        generation_id: Option<String>,
        note: Option<String>,
    ) {
        // The upstream exchange is over: free the slot before a lookup that may take seconds.
        drop(self.m.permit.take());
        let code = status.as_u16();
        if let Some(cost) = summary.usage.as_ref().and_then(|u| u.cost) {
            let s = Settlement::new(cost, SettlementSource::Usage, code);
            return self.now(s, &summary, note);
        }
        let id = generation_id.or_else(|| summary.id.clone());
        if status.is_client_error() && id.is_none() {
            // Refused by the upstream before generating (bad request, rate limit, no credit).
            let s = Settlement::new(Micros(0), SettlementSource::NotGenerated, code);
            return self.now(s, &summary, note);
        }
        if let Some(id) = id
            && let Some(generation) = lookup_generation(&self.state, &id, &self.m.auth).await
        {
            let mut s = Settlement::new(generation.cost, SettlementSource::Generation, code);
            s.prompt_tokens = generation.prompt_tokens;
            s.completion_tokens = generation.completion_tokens;
            s.routed_model = generation.model;
            s.provider = generation.provider;
            s.generation_id = Some(id);
            return self.now(s, &summary, note);
        }
        let worst = self
            .reservation
            .as_ref()
            .map_or(Micros(0), Reservation::amount);
        let s = Settlement::new(worst, SettlementSource::WorstCase, code);
        self.now(s, &summary, note);
    }

    /// Charges the settlement and ends the request in [`record`].
    fn charge(&mut self, mut s: Settlement, summary: &ResponseSummary, note: Option<String>) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        drop(self.m.permit.take());
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
        s.latency = Some(self.m.request.started.elapsed());
        // A generation record may name what the response did not.
        let violation = self.violation.take().or_else(|| {
            let policy = self.state.policy.load();
            let (model, provider) = (s.routed_model.as_deref(), s.provider.as_deref());
            check_served(&policy.gateway, &self.m.model, model, provider)
        });
        s.violation = violation.as_ref().map(|v| v.kind.as_str());
        let (served_model, served_provider) = (s.routed_model.clone(), s.provider.clone());
        let (source, cost, status, error) = (s.source, s.cost, s.status_code, s.error.clone());
        let settled = reservation.settle(s);
        let exit = Exit {
            endpoint: Some(self.m.endpoint.name()),
            model: &self.m.model,
            stream: self.m.stream,
            charge: Some(Charge {
                cost,
                charged: settled.charged,
                remaining: settled.remaining,
                source,
                overcharge: settled.overcharge,
            }),
            error: error.as_deref(),
            served_model: served_model.as_deref(),
            served_provider: served_provider.as_deref(),
            violation: violation.as_ref(),
            withheld: self.withheld,
            reason: self
                .withheld
                .then(|| violation.as_ref().map(Violation::as_str))
                .flatten(),
            ..Exit::bare(Kind::Metered, status)
        };
        record::record(&self.state, &self.m.request, &exit);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(reservation) = &self.reservation {
            let s = Settlement::new(reservation.amount(), SettlementSource::WorstCase, 0);
            let note = "dropped before settlement: settled at its worst case".to_owned();
            self.charge(s, &ResponseSummary::default(), Some(note));
        }
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
        let Ok((parts, body)) =
            upstream::fetch(&state.client, request, g.read_timeout, 1 << 20).await
        else {
            continue;
        };
        if !parts.status.is_success() {
            continue;
        }
        if let Some(cost) = usage::parse_generation(&body) {
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
    full(Refusal::upstream(status, message).response())
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

#[cfg(test)]
mod tests;
