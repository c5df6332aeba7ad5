//! The upstream every tunnel ends at: a TLS server (tokio-rustls) serving HTTP/1.1 and h2 (hyper-util
//! auto) on a listener the test hands in, so it can live on loopback or inside a namespace.
//!
//! Routes: `GET /` → `hello from <name>`; `GET /bytes/<n>` → n bytes of `x`;
//! `GET /slow/<n>/<ms>` → n chunks (`chunk <i>\n`), one every `ms` milliseconds (`n = 0`: forever).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// What the server saw; shared with the test.
#[derive(Default)]
pub struct Stats {
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    handshake_failures: AtomicUsize,
    requests: AtomicUsize,
    snis: Mutex<Vec<Option<String>>>,
}

impl Stats {
    /// TCP connections accepted (a rejected route must leave this unchanged).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    /// Completed TLS handshakes.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
    /// Failed TLS handshakes.
    pub fn handshake_failures(&self) -> usize {
        self.handshake_failures.load(Ordering::SeqCst)
    }
    /// HTTP requests served.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    /// The SNI of each completed handshake, in order.
    pub fn snis(&self) -> Vec<Option<String>> {
        self.snis.lock().unwrap().clone()
    }
}

/// A running server; shuts down (and drops its connections) on [`TlsServer::shutdown`] or drop.
pub struct TlsServer {
    addr: SocketAddr,
    name: String,
    stats: Arc<Stats>,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TlsServer {
    /// Binds 127.0.0.1:0 and serves there.
    pub async fn bind_local(name: &str, config: Arc<ServerConfig>) -> Result<TlsServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        TlsServer::start(listener, name, config)
    }

    /// Serves on a std listener (e.g. one bound inside a network namespace).
    pub fn start_std(
        listener: std::net::TcpListener,
        name: &str,
        config: Arc<ServerConfig>,
    ) -> Result<TlsServer> {
        listener.set_nonblocking(true)?;
        TlsServer::start(TcpListener::from_std(listener)?, name, config)
    }

    /// Serves on `listener` until shut down. Must be called inside a tokio runtime.
    pub fn start(
        listener: TcpListener,
        name: &str,
        config: Arc<ServerConfig>,
    ) -> Result<TlsServer> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let token = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            Arc::from(name),
            stats.clone(),
            token.clone(),
        ));
        Ok(TlsServer {
            addr,
            name: name.to_string(),
            stats,
            token,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The name in `hello from <name>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The body `GET /` answers with.
    pub fn hello_body(&self) -> String {
        format!("hello from {}", self.name)
    }

    /// Counters of what the server saw.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stops accepting and drops all open connections.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    name: Arc<str>,
    stats: Arc<Stats>,
    token: CancellationToken,
) {
    // Connections live in this set, so cancelling the loop drops (closes) them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    stats.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(serve(tcp, acceptor.clone(), name.clone(), stats.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    name: Arc<str>,
    stats: Arc<Stats>,
) {
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(_) => {
            stats.handshake_failures.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    stats.handshakes.fetch_add(1, Ordering::SeqCst);
    stats
        .snis
        .lock()
        .unwrap()
        .push(tls.get_ref().1.server_name().map(str::to_owned));
    let svc = hyper::service::service_fn(move |req| {
        stats.requests.fetch_add(1, Ordering::SeqCst);
        let name = name.clone();
        async move { Ok::<_, Infallible>(respond(&req, &name)) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(req: &Request<Incoming>, name: &str) -> Response<Body> {
    let path = req.uri().path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] => text(StatusCode::OK, format!("hello from {name}")),
        ["bytes", n] => match n.parse::<usize>() {
            Ok(n) => Response::new(Full::new(Bytes::from(vec![b'x'; n])).boxed()),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad length".into()),
        },
        ["slow", n, ms] => match (n.parse::<u64>(), ms.parse::<u64>()) {
            (Ok(n), Ok(ms)) => Response::new(slow_body(n, Duration::from_millis(ms))),
            _ => text(StatusCode::BAD_REQUEST, "bad slow parameters".into()),
        },
        _ => text(StatusCode::NOT_FOUND, "not found".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp
}

/// Streams `n` chunks (0 = forever), the first at once, then one per `every`.
fn slow_body(n: u64, every: Duration) -> Body {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut i = 0u64;
        while n == 0 || i < n {
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            if tx.send(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                break; // client went away
            }
            i += 1;
        }
    });
    ChannelBody(rx).boxed()
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}
