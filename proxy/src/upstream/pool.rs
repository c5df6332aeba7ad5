//! The keep-alive pool of HTTP/1.1 connections to the upstream, driven by the request that uses
//! them.
//!
//! hyper-util's pooled client runs every connection in a task of its own (and, for HTTP/1.1,
//! spawns one more per request to return the connection to the pool): each request crossed to
//! that task and back, and on a multi-threaded runtime each crossing could wake a parked sibling
//! thread. Here a [`Lease`] polls its connection inside the request's own task while the request
//! waits for its head and reads its body, and puts the idle connection back when the body ended.
//! Only a streamed (SSE) body, read by a task of its own, hands the connection to a driver task
//! ([`Lease::detach`]).

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tollgate_policy::Policy;

use super::FetchError;
use crate::tunnel::{self, SystemResolver};

/// An idle connection older than this is closed instead of reused (hyper-util's default was 90 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 256;

/// Boxed: the connection (TLS session, HTTP state) is kilobytes, and a lease moves in and out of
/// the pool and the request's futures; moved inline, those copies were a visible share of the CPU.
type Conn = Box<http1::Connection<TokioIo<TlsStream<TcpStream>>, Full<Bytes>>>;
type Sender = http1::SendRequest<Full<Bytes>>;

/// Where a request goes: the pool key and what connecting needs.
struct Target {
    host: String,
    port: u16,
    /// The URI's authority: the pool's key and the `Host` header.
    key: Arc<str>,
}

impl Target {
    /// The `https` authority of `uri`; anything else is refused (the gateway only speaks TLS).
    fn of(uri: &http::Uri) -> Result<Target, FetchError> {
        if uri.scheme_str() != Some("https") {
            return Err(FetchError::Connect(format!("not an https URL: {uri}")));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| FetchError::Connect(format!("no host in {uri}")))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        Ok(Target {
            host: host.to_owned(),
            port,
            key: Arc::from(authority.as_str()),
        })
    }
}

/// A connection at rest in the pool.
struct Idle {
    key: Arc<str>,
    sender: Sender,
    conn: Conn,
    since: Instant,
}

/// The shared pool and what a new connection needs.
pub(super) struct Pool {
    idle: Mutex<Vec<Idle>>,
    tls: TlsConnector,
    /// For each host's pins and allowed ranges, as tunnels dial.
    policy: Arc<ArcSwap<Policy>>,
    connect_timeout: Duration,
}

/// A connection taken from (or opened for) one request; it goes back to the pool once the
/// response body was read to its end.
pub struct Lease {
    pool: Arc<Pool>,
    key: Arc<str>,
    sender: Sender,
    /// `None` once the connection ended.
    conn: Option<Conn>,
}

impl Pool {
    pub(super) fn new(
        tls: TlsConnector,
        policy: Arc<ArcSwap<Policy>>,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            tls,
            policy,
            connect_timeout,
        }
    }

    /// Sends `request` (absolute `https` URI) on a pooled or new connection and waits for the
    /// response head. A request that a reused connection closed before it was written is sent
    /// again on a new one (it never reached the upstream, so it cannot have been charged).
    pub(super) async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), FetchError> {
        let target = Target::of(request.uri())?;
        origin_form(&mut request, &target)?;
        loop {
            let (mut lease, pooled) = match self.checkout(&target.key) {
                Some(lease) => (lease, true),
                // Boxed: the rare connect path would otherwise size (and slow the moves of)
                // every request's future.
                None => (Box::pin(self.connect(&target)).await?, false),
            };
            let sent = lease.sender.try_send_request(request);
            match lease.drive(sent).await {
                Ok(response) => return Ok((response, lease)),
                Err(mut error) => match error.take_message() {
                    // Each retry used up one pooled connection: this ends.
                    Some(unsent) if pooled => request = unsent,
                    _ => return Err(FetchError::Request(error.into_error())),
                },
            }
        }
    }

    /// An idle connection to `key` that is still open and ready for a request.
    fn checkout(self: &Arc<Self>, key: &Arc<str>) -> Option<Lease> {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            // The lock is held only to take the entry, not while it is polled.
            let mut entry = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let pos = idle.iter().rposition(|i| i.key == *key)?;
                idle.swap_remove(pos)
            };
            if entry.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // One poll lets the connection read a close (or a stray byte) that arrived while it
            // sat here, and ask for its next request.
            if Pin::new(&mut entry.conn).poll(&mut cx).is_ready() || !entry.sender.is_ready() {
                continue;
            }
            return Some(Lease {
                pool: self.clone(),
                key: entry.key,
                sender: entry.sender,
                conn: Some(entry.conn),
            });
        }
    }

    /// Dials the host as tunnels do ([`tunnel::dial`]: the policy's pins, the address filter),
    /// then runs the TLS and HTTP/1.1 handshakes, all within the connect timeout.
    async fn connect(self: &Arc<Self>, target: &Target) -> Result<Lease, FetchError> {
        let connect = async {
            let policy = self.policy.load();
            let host = target.host.to_ascii_lowercase();
            let rule = policy.host_rule(&host);
            let dial_target = tunnel::Target {
                host: &host,
                port: target.port,
                pin: rule.map_or(&[][..], |r| r.pin.as_slice()),
                allow_ranges: rule.map_or(&[][..], |r| r.allow_ranges.as_slice()),
            };
            let tcp = tunnel::dial(dial_target, &SystemResolver, self.connect_timeout)
                .await
                .map_err(|e| FetchError::Connect(e.to_string()))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| FetchError::Connect(e.to_string()))?;
            (self.tls.connect(name, tcp).await).map_err(|e| FetchError::Connect(e.to_string()))
        };
        let tls = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(tls) => tls?,
            Err(_) => return Err(FetchError::Connect("connect timed out".to_owned())),
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        Ok(Lease {
            pool: self.clone(),
            key: target.key.clone(),
            sender,
            conn: Some(Box::new(conn)),
        })
    }

    fn put_back(&self, key: Arc<str>, sender: Sender, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                key,
                sender,
                conn,
                since: Instant::now(),
            });
        }
    }
}

impl Lease {
    /// Runs `fut` (waiting on this connection's response or body) while polling the connection
    /// in the same task. If the connection ends, `fut` still resolves: hyper fails what the
    /// connection left unfinished.
    pub async fn drive<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Some(conn) = self.conn.as_mut()
                && Pin::new(conn).poll(cx).is_ready()
            {
                self.conn = None;
            }
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// The body was read to its end: the connection goes back to the pool if it stayed open.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(self.key.clone(), self.sender, conn);
        }
    }

    /// Hands the connection to a task of its own, for a body read elsewhere (a stream); it
    /// returns to the pool when that body ended and the connection is ready again.
    pub fn detach(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let (pool, key, mut sender) = (self.pool, self.key, self.sender);
        tokio::spawn(async move {
            let ready = poll_fn(|cx| {
                if Pin::new(&mut conn).poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                sender.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if ready {
                pool.put_back(key, sender, conn);
            }
        });
    }
}

/// HTTP/1.1 wants the path in the request line and the authority in `Host`.
fn origin_form(request: &mut Request<Full<Bytes>>, target: &Target) -> Result<(), FetchError> {
    let host = header::HeaderValue::from_str(&target.key)
        .map_err(|e| FetchError::Connect(e.to_string()))?;
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let path: http::Uri = path
        .parse()
        .map_err(|e: http::uri::InvalidUri| FetchError::Connect(e.to_string()))?;
    *request.uri_mut() = path;
    request.headers_mut().insert(header::HOST, host);
    Ok(())
}
