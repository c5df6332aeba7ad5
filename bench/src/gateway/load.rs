//! The load: keep-alive HTTPS clients the way an agent's SDK holds them (hyper over rustls on
//! ring, one connection per worker, HTTP/1.1 or h2), the same request body for every target,
//! and closed loops that time each exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::task::JoinSet;
use tollgate_bench::proc::{self, CpuTime};
use tollgate_tests::clients::tls_connect;
use tollgate_tests::fake_openrouter::CHAT;
use tollgate_tests::gateway::{HOST, MODEL, chat, chat_stream};
use tollgate_tests::llm_client::{AGENT_KEY, client_config_from_pem};
use tollgate_tests::pki::{ALPN_H2_HTTP11, ALPN_HTTP11};

use super::stats::Stats;

/// The longest one exchange may take before it counts as an error.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP version a client speaks (offered by ALPN, and checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// HTTP/1.1.
    H1,
    /// h2.
    H2,
}

/// What one exchange is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exchange {
    /// A non-streaming chat completion, timed to the last byte of the JSON answer.
    Chat,
    /// A streaming chat completion, timed to the first `data:` event (then read to its end).
    FirstEvent,
}

impl Exchange {
    /// The request body: the test-support chat request (`max_tokens` 100) for [`MODEL`].
    fn body(self) -> Bytes {
        let v = match self {
            Exchange::Chat => chat(MODEL),
            Exchange::FirstEvent => chat_stream(MODEL),
        };
        Bytes::from(v.to_string())
    }
}

/// Where a client connects (the fake or tollgate) and the CA it trusts; the TLS name is always
/// `openrouter.ai`.
#[derive(Clone)]
pub struct Endpoint {
    addr: SocketAddr,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

impl Endpoint {
    /// A client endpoint for `addr`, trusting the certificates in `ca_pem`.
    pub fn new(addr: SocketAddr, ca_pem: &[u8]) -> Result<Endpoint> {
        Ok(Endpoint {
            addr,
            h1: client_config_from_pem(ca_pem, ALPN_HTTP11)?,
            h2: client_config_from_pem(ca_pem, ALPN_H2_HTTP11)?,
        })
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One keep-alive connection; its driver task ends with it.
struct Conn {
    sender: Sender,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    async fn open(ep: &Endpoint, proto: Proto) -> Result<Conn> {
        let config = match proto {
            Proto::H1 => ep.h1.clone(),
            Proto::H2 => ep.h2.clone(),
        };
        let tls = tls_connect(ep.addr, HOST, config).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let (sender, driver) = match proto {
            Proto::H1 => {
                let (sender, conn) = http1::handshake(io).await?;
                (Sender::H1(sender), drive(conn))
            }
            Proto::H2 => {
                ensure!(alpn.as_deref() == Some(b"h2"), "ALPN did not choose h2");
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                (Sender::H2(sender), drive(conn))
            }
        };
        Ok(Conn { sender, driver })
    }

    async fn send(&mut self, body: Bytes) -> Result<Response<Incoming>> {
        let req = Request::post(CHAT)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {AGENT_KEY}"));
        let response = match &mut self.sender {
            Sender::H1(s) => {
                let req = req.header(header::HOST, HOST).body(Full::new(body))?;
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                let req = req
                    .uri(format!("https://{HOST}{CHAT}"))
                    .body(Full::new(body))?;
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        if !response.status().is_success() {
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(response)
    }

    /// One exchange; returns its latency (see [`Exchange`]).
    async fn exchange(&mut self, what: Exchange, body: Bytes) -> Result<Duration> {
        let timed = async {
            let start = Instant::now();
            let mut response = self.send(body).await?;
            match what {
                Exchange::Chat => {
                    let body = response.body_mut().collect().await?.to_bytes();
                    ensure!(!body.is_empty(), "empty answer");
                    Ok(start.elapsed())
                }
                Exchange::FirstEvent => {
                    let mut seen = Vec::new();
                    let mut first = None;
                    while let Some(frame) = response.body_mut().frame().await {
                        if let (None, Ok(data)) = (first, frame?.into_data()) {
                            seen.extend_from_slice(&data);
                            if seen.windows(5).any(|w| w == b"data:") {
                                first = Some(start.elapsed());
                            }
                        }
                    }
                    first.context("the stream ended without a data event")
                }
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, timed)
            .await
            .context("exchange timed out")?
    }
}

/// Runs a connection's driver (its I/O) in a task of its own.
fn drive<C, E>(conn: C) -> tokio::task::JoinHandle<()>
where
    C: std::future::Future<Output = Result<(), E>> + Send + 'static,
{
    tokio::spawn(async {
        let _ = conn.await;
    })
}

/// One measurement of one scenario against one target.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Latencies of the exchanges completed in the window.
    pub stats: Stats,
    /// Exchanges completed per second in the window.
    pub rate: f64,
    /// Failed exchanges, warm-up included.
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// CPU time the proxy used in the window (None for direct).
    pub proxy_cpu: Option<Duration>,
    /// Share of all cores busy in the window with work that was neither this process nor the
    /// proxy: other people's, i.e. noise (approximate: interrupts are charged to nobody).
    pub other_busy: Option<f64>,
    /// TLS connections the upstream accepted during the sample, warm-up included (set by the
    /// caller, who can see the upstream): the clients' own when direct, the proxy's pool's
    /// when through it.
    pub upstream_connections: usize,
}

impl Sample {
    /// The proxy's CPU time per exchange, in µs.
    pub fn cpu_per_exchange_us(&self) -> Option<f64> {
        let n = self.stats.n as f64;
        self.proxy_cpu
            .filter(|_| n > 0.0)
            .map(|c| c.as_secs_f64() * 1e6 / n)
    }
}

/// CPU counters at one edge of a window.
struct CpuReading {
    at: Instant,
    proxy: Option<Duration>,
    own: Option<Duration>,
    machine: Option<CpuTime>,
}

impl CpuReading {
    fn take(proxy_pid: Option<u32>) -> CpuReading {
        CpuReading {
            at: Instant::now(),
            proxy: proxy_pid.and_then(proc::process_cpu),
            own: proc::process_cpu(std::process::id()),
            machine: proc::machine_cpu(),
        }
    }

    /// (proxy CPU, other people's share of the machine) between `self` and `end`.
    fn until(&self, end: &CpuReading) -> (Option<Duration>, Option<f64>) {
        let proxy = self.proxy.zip(end.proxy).map(|(a, b)| b.saturating_sub(a));
        let own = self.own.zip(end.own).map(|(a, b)| b.saturating_sub(a));
        let busy = self
            .machine
            .zip(end.machine)
            .and_then(|(a, b)| CpuTime::busy_between(a, b));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let window = (end.at - self.at).as_secs_f64().max(1e-9);
        let other = busy.zip(own).map(|(busy, own)| {
            let ours = own + proxy.unwrap_or_default();
            (busy - ours.as_secs_f64() / (window * cores)).max(0.0)
        });
        (proxy, other)
    }
}

/// One connection, `warmup` untimed exchanges, then `n` timed ones back to back.
pub async fn sequential(
    ep: &Endpoint,
    proto: Proto,
    what: Exchange,
    warmup: usize,
    n: usize,
    proxy_pid: Option<u32>,
) -> Result<Sample> {
    let body = what.body();
    let mut conn = Conn::open(ep, proto).await?;
    let mut errors = Errors::default();
    for _ in 0..warmup {
        if let Err(e) = conn.exchange(what, body.clone()).await {
            errors.record(e);
            conn = Conn::open(ep, proto).await?;
        }
    }
    let mut latencies = Vec::with_capacity(n);
    let start = CpuReading::take(proxy_pid);
    for _ in 0..n {
        match conn.exchange(what, body.clone()).await {
            Ok(latency) => latencies.push(latency),
            Err(e) => {
                errors.record(e);
                conn = Conn::open(ep, proto).await?;
            }
        }
    }
    let end = CpuReading::take(proxy_pid);
    let (proxy_cpu, other_busy) = start.until(&end);
    let window = (end.at - start.at).as_secs_f64();
    Ok(Sample {
        rate: latencies.len() as f64 / window,
        stats: Stats::of(&mut latencies),
        errors: errors.count,
        first_error: errors.first,
        proxy_cpu,
        other_busy,
        upstream_connections: 0,
    })
}

/// `conns` connections, each a closed loop; exchanges completed within `window` (after
/// `warmup`) are counted and timed.
pub async fn concurrent(
    ep: &Endpoint,
    proto: Proto,
    what: Exchange,
    conns: usize,
    warmup: Duration,
    window: Duration,
    proxy_pid: Option<u32>,
) -> Result<Sample> {
    let body = what.body();
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(Conn::open(ep, proto).await?);
    }
    let w0 = Instant::now() + warmup;
    let w1 = w0 + window;
    let mut workers = JoinSet::new();
    for mut conn in opened {
        let (ep, body) = (ep.clone(), body.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Errors::default();
            loop {
                match conn.exchange(what, body.clone()).await {
                    Ok(latency) => {
                        let done = Instant::now();
                        if done > w1 {
                            break;
                        }
                        if done >= w0 {
                            latencies.push(latency);
                        }
                    }
                    Err(e) => {
                        errors.record(e);
                        if Instant::now() > w1 {
                            break;
                        }
                        match Conn::open(&ep, proto).await {
                            Ok(c) => conn = c,
                            Err(e) => {
                                errors.record(e);
                                break;
                            }
                        }
                    }
                }
            }
            (latencies, errors)
        });
    }
    tokio::time::sleep_until(w0.into()).await;
    let start = CpuReading::take(proxy_pid);
    tokio::time::sleep_until(w1.into()).await;
    let end = CpuReading::take(proxy_pid);
    let mut latencies = Vec::new();
    let mut errors = Errors::default();
    while let Some(joined) = workers.join_next().await {
        let (l, e) = joined.context("a load worker panicked")?;
        latencies.extend(l);
        errors.count += e.count;
        errors.first = errors.first.or(e.first);
    }
    let (proxy_cpu, other_busy) = start.until(&end);
    Ok(Sample {
        rate: latencies.len() as f64 / window.as_secs_f64(),
        stats: Stats::of(&mut latencies),
        errors: errors.count,
        first_error: errors.first,
        proxy_cpu,
        other_busy,
        upstream_connections: 0,
    })
}

#[derive(Default)]
struct Errors {
    count: u64,
    first: Option<String>,
}

impl Errors {
    fn record(&mut self, e: anyhow::Error) {
        self.count += 1;
        self.first.get_or_insert_with(|| format!("{e:#}"));
    }
}
