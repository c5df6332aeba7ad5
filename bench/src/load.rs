//! The load generator: the three scenarios, each a warm-up then a timed window.
//!
//! Workers run until the window closes and are then aborted; only units completed inside the
//! window count (bytes for throughput, as they arrive, so a 1 MiB response straddling the edge
//! counts in part).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::origin::find;
use crate::pki;
use crate::proc::{self, CpuTime};

/// One exchange (connect, handshake, request, or whole response) taking longer than this is an
/// error, so a stuck target shows as errors rather than a hang.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed connection before the worker dials again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
const READ_CHUNK: usize = 64 * 1024;
const MAX_HEAD: usize = 16 * 1024;

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// `GET /1m` in a loop on keep-alive connections; MiB/s of body.
    Throughput,
    /// `GET /small` in a loop on keep-alive connections; requests/s.
    Small,
    /// Connect, full TLS handshake, one `GET /small`, close; connections/s.
    NewConn,
}

impl Scenario {
    /// All scenarios, in report order.
    pub const ALL: [Scenario; 3] = [Scenario::Throughput, Scenario::Small, Scenario::NewConn];

    /// Short name for flags and progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Small => "small",
            Scenario::NewConn => "newconn",
        }
    }

    /// Unit of the rate.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Throughput => "MiB/s",
            Scenario::Small => "req/s",
            Scenario::NewConn => "conn/s",
        }
    }

    /// Unit of the proxy's CPU cost per unit of work.
    pub fn cost_unit(self) -> &'static str {
        match self {
            Scenario::Throughput => "CPU ms per MiB",
            Scenario::Small => "CPU µs per request",
            Scenario::NewConn => "CPU µs per connection",
        }
    }

    /// Scale from CPU seconds per unit to [`Scenario::cost_unit`].
    pub fn cost_scale(self) -> f64 {
        match self {
            Scenario::Throughput => 1e3,
            Scenario::Small | Scenario::NewConn => 1e6,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Scenario::Throughput => "/1m",
            Scenario::Small | Scenario::NewConn => "/small",
        }
    }

    /// Units counted per unit reported (bytes per MiB for throughput).
    fn divisor(self) -> f64 {
        match self {
            Scenario::Throughput => (1u64 << 20) as f64,
            Scenario::Small | Scenario::NewConn => 1.0,
        }
    }
}

/// Shape of one measurement.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Untimed run before the window, so connections exist and caches are warm.
    pub warmup: Duration,
    /// The timed window.
    pub duration: Duration,
    /// Keep-alive connections for throughput and small requests.
    pub connections: usize,
    /// Connections in flight at once for the new-connection rate.
    pub new_conn_concurrency: usize,
}

/// One measurement of one scenario against one target.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Rate in [`Scenario::unit`].
    pub rate: f64,
    /// Failed exchanges over warm-up and window.
    pub errors: u64,
    /// CPU the proxy process used in the window, if the target is a process.
    pub proxy_cpu: Option<Duration>,
    /// Share of all cores busy in the window, 0–1 (the whole machine, not just this run).
    pub machine_busy: Option<f64>,
    /// Share of all cores busy in the window with neither this process nor the proxy: other
    /// people's work, i.e. noise (approximate: interrupt time is not charged to processes).
    pub other_busy: Option<f64>,
    /// Units completed in the window (rate × window, in [`Scenario::unit`] numerators).
    pub units: f64,
}

impl Sample {
    /// The proxy's CPU time per unit, in [`Scenario::cost_unit`].
    pub fn cost(&self, scenario: Scenario) -> Option<f64> {
        let cpu = self.proxy_cpu?;
        (self.units > 0.0).then(|| cpu.as_secs_f64() / self.units * scenario.cost_scale())
    }
}

#[derive(Default)]
struct Counters {
    units: AtomicU64,
    errors: AtomicU64,
}

/// Runs `scenario` against `addr` (`proxy_pid`: the process whose CPU to account).
pub async fn measure(
    scenario: Scenario,
    addr: SocketAddr,
    client: Arc<ClientConfig>,
    load: Load,
    proxy_pid: Option<u32>,
) -> Sample {
    let counters = Arc::new(Counters::default());
    let connector = TlsConnector::from(client);
    let mut workers = JoinSet::new();
    let n = match scenario {
        Scenario::Throughput | Scenario::Small => load.connections,
        Scenario::NewConn => load.new_conn_concurrency,
    };
    for _ in 0..n {
        let (connector, counters) = (connector.clone(), counters.clone());
        match scenario {
            Scenario::Throughput | Scenario::Small => {
                workers.spawn(keep_alive_worker(scenario, addr, connector, counters))
            }
            Scenario::NewConn => workers.spawn(new_conn_worker(addr, connector, counters)),
        };
    }
    sleep(load.warmup).await;
    let (u0, t0) = (counters.units.load(Ordering::Relaxed), Instant::now());
    let cpu0 = CpuReading::take(proxy_pid);
    sleep(load.duration).await;
    let (u1, t1) = (counters.units.load(Ordering::Relaxed), Instant::now());
    let cpu1 = CpuReading::take(proxy_pid);
    workers.shutdown().await;

    let window = (t1 - t0).as_secs_f64();
    let units = (u1 - u0) as f64 / scenario.divisor();
    let machine_busy = cpu0
        .machine
        .zip(cpu1.machine)
        .and_then(|(a, b)| CpuTime::busy_between(a, b));
    let proxy_cpu = cpu0.proxy.zip(cpu1.proxy).map(|(a, b)| b.saturating_sub(a));
    let own_cpu = cpu0.own.zip(cpu1.own).map(|(a, b)| b.saturating_sub(a));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let other_busy = machine_busy.zip(own_cpu).map(|(busy, own)| {
        let ours = own + proxy_cpu.unwrap_or_default();
        (busy - ours.as_secs_f64() / (window * cores)).max(0.0)
    });
    Sample {
        rate: units / window,
        errors: counters.errors.load(Ordering::Relaxed),
        proxy_cpu,
        machine_busy,
        other_busy,
        units,
    }
}

/// CPU counters read at one edge of the window.
struct CpuReading {
    machine: Option<CpuTime>,
    own: Option<Duration>,
    proxy: Option<Duration>,
}

impl CpuReading {
    fn take(proxy_pid: Option<u32>) -> CpuReading {
        CpuReading {
            machine: proc::machine_cpu(),
            own: proc::process_cpu(std::process::id()),
            proxy: proxy_pid.and_then(proc::process_cpu),
        }
    }
}

async fn connect(addr: SocketAddr, connector: &TlsConnector) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    connector.connect(pki::server_name(), tcp).await
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", pki::SNI).into_bytes()
}

async fn keep_alive_worker(
    scenario: Scenario,
    addr: SocketAddr,
    connector: TlsConnector,
    counters: Arc<Counters>,
) {
    let request = request(scenario.path());
    loop {
        // Only an error returns; the worker is aborted when the window closes.
        let _ = keep_alive(scenario, addr, &connector, &request, &counters).await;
        counters.errors.fetch_add(1, Ordering::Relaxed);
        sleep(RETRY_PAUSE).await;
    }
}

async fn keep_alive(
    scenario: Scenario,
    addr: SocketAddr,
    connector: &TlsConnector,
    request: &[u8],
    counters: &Counters,
) -> io::Result<()> {
    let mut tls = timed(connect(addr, connector)).await?;
    let mut reader = ResponseReader::new();
    loop {
        let exchange = async {
            tls.write_all(request).await?;
            tls.flush().await?;
            match scenario {
                Scenario::Throughput => {
                    let on_body = |n: usize| {
                        counters.units.fetch_add(n as u64, Ordering::Relaxed);
                    };
                    reader.read_response(&mut tls, on_body).await
                }
                _ => reader.read_response(&mut tls, |_| ()).await,
            }
        };
        timed(exchange).await?;
        if scenario != Scenario::Throughput {
            counters.units.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn new_conn_worker(addr: SocketAddr, connector: TlsConnector, counters: Arc<Counters>) {
    let request = request(Scenario::NewConn.path());
    let mut reader = ResponseReader::new();
    loop {
        let one = async {
            let mut tls = connect(addr, &connector).await?;
            tls.write_all(&request).await?;
            tls.flush().await?;
            reader.clear();
            reader.read_response(&mut tls, |_| ()).await?;
            // close_notify, then FIN; the client closes first, as browsers and SDKs mostly do.
            tls.shutdown().await
        };
        match timed(one).await {
            Ok(()) => counters.units.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                sleep(RETRY_PAUSE).await;
                continue;
            }
        };
    }
}

async fn timed<T>(op: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    timeout(OP_TIMEOUT, op).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "operation timed out",
        ))
    })
}

/// Reads HTTP/1.1 responses with a Content-Length off a stream, never past the body's end.
struct ResponseReader {
    head: Vec<u8>,
    chunk: Vec<u8>,
}

impl ResponseReader {
    fn new() -> ResponseReader {
        ResponseReader {
            head: Vec::with_capacity(4096),
            chunk: vec![0; READ_CHUNK],
        }
    }

    fn clear(&mut self) {
        self.head.clear();
    }

    /// Reads one `200` response; `on_body` gets each body chunk's length as it arrives.
    async fn read_response<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        mut on_body: impl FnMut(usize),
    ) -> io::Result<()> {
        let head_end = loop {
            if let Some(i) = find(&self.head, b"\r\n\r\n") {
                break i + 4;
            }
            if self.head.len() > MAX_HEAD {
                return Err(invalid("response head too long"));
            }
            if stream.read_buf(&mut self.head).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = &self.head[..head_end];
        if !head.starts_with(b"HTTP/1.1 200 ") {
            return Err(invalid("response status is not 200"));
        }
        let mut remaining = content_length(head).ok_or_else(|| invalid("no content-length"))?;
        // The head read may have taken some of the body with it (never more: no pipelining).
        let early = (self.head.len() - head_end).min(remaining);
        if early > 0 {
            on_body(early);
        }
        remaining -= early;
        self.head.drain(..head_end + early);
        while remaining > 0 {
            let want = remaining.min(self.chunk.len());
            let n = stream.read(&mut self.chunk[..want]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            on_body(n);
            remaining -= n;
        }
        Ok(())
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_found_case_insensitively() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 42\r\n\r\n";
        assert_eq!(content_length(head), Some(42));
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }
}
