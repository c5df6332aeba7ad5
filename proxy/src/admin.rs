//! The admin endpoint (default :15090): `/metrics`, `/healthz`, `/readyz`.
//!
//! Read-only by construction: the agent shares the Pod's network namespace and can reach this
//! port, so it serves GETs of state and nothing that could change it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::evidence::Recorder;
use crate::metrics::Metrics;
use crate::probe::{self, ProbeKey};

/// Readiness: listeners bound and a policy loaded.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the proxy ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ready: Arc<Readiness>,
    probe: Option<Arc<ProbeKey>>,
    evidence: Option<Arc<Recorder>>,
    limits: ReadOnlyLimits,
    shutdown: CancellationToken,
) {
    let catalog = metrics.clone();
    let responder = move |req: &Request<Incoming>| {
        if req.uri().path() == "/run_receipt.json" {
            return receipt(evidence.as_deref());
        }
        respond(req, &metrics, &ready, probe.as_deref())
    };
    serve_read_only(
        "admin",
        listener,
        Arc::new(responder),
        limits,
        &catalog,
        shutdown,
    )
    .await;
}

/// Answers a request from shared state; it cannot change anything.
pub type Responder = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// The largest request head (request line + headers) a read-only endpoint reads. hyper's
/// minimum; a scrape or a probe sends a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The longest a read-only connection may stay open (one request, answered, then closed): a
/// reader that never drains a `/metrics` response cannot hold a slot.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Bounds on a read-only listener. The agent can reach it, so what one connection may cost is
/// capped, and so is the number of connections.
#[derive(Clone, Copy, Debug)]
pub struct ReadOnlyLimits {
    /// Connections open at once on this listener; more are accepted and closed at once.
    pub max_connections: usize,
    /// How long a client may take to send its request head.
    pub header_timeout: Duration,
}

/// A plain-HTTP/1.1 server for read-only endpoints (admin, usage): non-GET requests get 405.
/// One request per connection (no keep-alive), a small head read within a deadline, a cap on
/// open connections: each bound closes the connection and counts it by reason.
pub async fn serve_read_only(
    name: &'static str,
    listener: TcpListener,
    responder: Responder,
    limits: ReadOnlyLimits,
    metrics: &Metrics,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let closed = metrics.bounds.read_only_closed.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "read-only endpoint accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the cap: close at once rather than leave it in the backlog, where it would
        // still hold a kernel socket and delay the probes queued behind it.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            closed.with_label_values(&[name, "connection-limit"]).inc();
            tracing::debug!(listener = name, %peer, "read-only connection limit reached");
            drop(stream);
            continue;
        };
        let responder = responder.clone();
        let closed = closed.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = if req.method() == Method::GET || req.method() == Method::HEAD {
                    responder(&req)
                } else {
                    text(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "read-only endpoint: GET only\n",
                    )
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let reason = match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) if e.is_timeout() => Some("header-timeout"),
                Ok(Err(e)) if e.is_parse_too_large() => Some("headers-too-large"),
                // Anything else is a client hanging up or sending garbage; nothing to report.
                Ok(Err(_)) => None,
                Err(_) => Some("lifetime"),
            };
            if let Some(reason) = reason {
                closed.with_label_values(&[name, reason]).inc();
                tracing::debug!(listener = name, %peer, reason, "read-only connection closed");
            }
            drop(permit);
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    ready: &Readiness,
    probe: Option<&ProbeKey>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only endpoint: GET only\n",
        );
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics.render())))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "render failed\n")),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.get() => {
            let mut response = text(StatusCode::OK, "ready\n");
            // Only tollgate holds the key: `tollgate probe` tells it from a port squatter.
            let challenge = req.headers().get(probe::CHALLENGE_HEADER);
            let proof = challenge
                .and_then(|c| c.to_str().ok())
                .zip(probe)
                .and_then(|(c, key)| key.prove(c))
                .and_then(|p| header::HeaderValue::from_str(&p).ok());
            if let Some(proof) = proof {
                response.headers_mut().insert(probe::PROOF_HEADER, proof);
            }
            response
        }
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /run_receipt.json`: the receipt for the decision log as it stands (read only: the file
/// in the data dir is written at shutdown).
fn receipt(evidence: Option<&Recorder>) -> Response<Full<Bytes>> {
    let Some(evidence) = evidence else {
        return text(
            StatusCode::NOT_FOUND,
            "no decision log: no data dir configured\n",
        );
    };
    match serde_json::to_vec_pretty(&evidence.receipt()) {
        Ok(body) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "render failed\n")),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "render failed\n"),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}
