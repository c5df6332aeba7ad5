//! The tunnel: dial the SNI host as the proxy resolves it, replay the ClientHello, copy both ways.
//!
//! The original destination is never dialled: an allowed SNI aimed at another address would
//! otherwise be an open door. Resolved (or pinned) addresses pass the [`address`] filter first.

pub mod address;

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ipnet::IpNet;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

/// The most one read takes from a socket.
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// One copy buffer per runtime thread, shared by every tunnel on it. A direction reads into
    /// it and writes straight on within one poll, so the buffer is never held across an await
    /// and an idle tunnel holds no buffer at all (issue 13: idle tunnels held two 16 KiB
    /// buffers each). Only what a full socket does not take is copied out, and freed once sent.
    static CHUNK_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; CHUNK]);
}

/// A boxed, sendable future, for the resolver trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Name resolution, an OS edge kept behind a trait so tests need no DNS.
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host` resolves to, with `port`.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;
}

/// The proxy's own resolver: the system's getaddrinfo (resolv.conf), on tokio's blocking pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Where a tunnel goes: the SNI host and what the policy says about it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The normalised SNI host.
    pub host: &'a str,
    /// Upstream port (443 unless the policy says otherwise).
    pub port: u16,
    /// Addresses pinned by the policy; empty means resolve.
    pub pin: &'a [IpAddr],
    /// Non-public ranges the policy explicitly allows for this host.
    pub allow_ranges: &'a [IpNet],
}

/// Why a dial failed; each maps to a bounded reason.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The resolver failed or returned nothing.
    #[error("resolving the host failed: {0}")]
    Resolve(io::Error),
    /// Every address was non-public and not allowed for this host.
    #[error("{addr} is {kind} and the policy does not allow it for this host")]
    NonPublic {
        /// The first refused address.
        addr: IpAddr,
        /// Which kind of non-public address it is.
        kind: &'static str,
    },
    /// Connecting failed on every permitted address.
    #[error("connecting failed: {0}")]
    Connect(io::Error),
    /// The connect timeout ran out.
    #[error("connect timed out")]
    Timeout,
}

impl DialError {
    /// The bounded reason for logs and metrics.
    pub fn reason(&self) -> crate::route::Reason {
        use crate::route::Reason;
        match self {
            DialError::Resolve(_) => Reason::ResolveFailed,
            DialError::NonPublic { .. } => Reason::NonPublicAddress,
            DialError::Connect(_) => Reason::ConnectFailed,
            DialError::Timeout => Reason::ConnectTimeout,
        }
    }
}

/// Resolves (or takes the pins of) `target`, filters the addresses and connects to the first
/// permitted one that answers, all within `connect_timeout`.
pub async fn dial(
    target: Target<'_>,
    resolver: &dyn Resolve,
    connect_timeout: Duration,
) -> Result<TcpStream, DialError> {
    let deadline = Instant::now() + connect_timeout;
    let addrs: Vec<SocketAddr> = if target.pin.is_empty() {
        timeout_at(deadline, resolver.resolve(target.host, target.port))
            .await
            .map_err(|_| DialError::Timeout)?
            .map_err(DialError::Resolve)?
    } else {
        target
            .pin
            .iter()
            .map(|ip| SocketAddr::new(*ip, target.port))
            .collect()
    };
    let Some(first) = addrs.first() else {
        return Err(DialError::Resolve(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses",
        )));
    };
    let permitted: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| address::permitted(a.ip(), target.allow_ranges))
        .collect();
    if permitted.is_empty() {
        let ip = first.ip();
        let kind = address::non_public_kind(ip).unwrap_or("non-public");
        return Err(DialError::NonPublic { addr: ip, kind });
    }
    let mut last_err = DialError::Connect(io::Error::other("no address answered"));
    for addr in permitted {
        match connect(addr, deadline).await {
            Ok(stream) => return Ok(stream),
            Err(DialError::Timeout) => return Err(DialError::Timeout),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// Connects to one address by `deadline`, with no address filter of its own: [`dial`] filters
/// resolved addresses, and the capture router's decision has already judged its destination.
pub async fn connect(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, DialError> {
    match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            // Latency over throughput for request/response protocols; the kernel still
            // coalesces bulk writes.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(DialError::Connect(e)),
        Err(_) => Err(DialError::Timeout),
    }
}

/// How a spliced tunnel ended, and what it carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes agent → host, the replayed ClientHello included.
    pub up: u64,
    /// Bytes host → agent.
    pub down: u64,
    /// `closed`, `idle-timeout`, `drain-timeout` or `io-error`.
    pub end: &'static str,
}

/// Byte counters the splice updates as it goes (so long tunnels show in metrics while open).
#[derive(Clone)]
pub struct Counters {
    /// Agent → host.
    pub up: IntCounter,
    /// Host → agent.
    pub down: IntCounter,
}

/// Copies both ways after replaying `replay` upstream, with half-close: EOF from one side shuts
/// down writing to the other, and the tunnel ends when both directions are done. Ends early on
/// an I/O error, when neither side has sent anything for `idle`, or when `stop` fires.
/// `replay` is freed once sent.
pub async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    replay: Vec<u8>,
    idle: Duration,
    stop: &CancellationToken,
    counters: &Counters,
) -> Transfer {
    // Borrowed halves: no lock between the two directions (tokio::io::split would add one).
    let (mut client_r, mut client_w) = client.split();
    let (mut up_r, mut up_w) = upstream.split();
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));

    let end = {
        let replay_then_copy = async {
            up_w.write_all(&replay).await?;
            up.fetch_add(replay.len() as u64, Ordering::Relaxed);
            counters.up.inc_by(replay.len() as u64);
            drop(replay);
            copy_half(
                &mut client_r,
                &mut up_w,
                &up,
                &counters.up,
                &activity,
                start,
            )
            .await
        };
        let copy_down = copy_half(
            &mut up_r,
            &mut client_w,
            &down,
            &counters.down,
            &activity,
            start,
        );
        let both = async { tokio::try_join!(replay_then_copy, copy_down) };
        tokio::pin!(both);
        let mut idle_at = start + idle;
        loop {
            tokio::select! {
                res = &mut both => break if res.is_ok() { "closed" } else { "io-error" },
                _ = stop.cancelled() => break "drain-timeout",
                _ = sleep_until(idle_at) => {
                    let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
                    if Instant::now() >= last + idle {
                        break "idle-timeout";
                    }
                    idle_at = last + idle;
                }
            }
        }
    };
    Transfer {
        up: up.into_inner(),
        down: down.into_inner(),
        end,
    }
}

/// What one readiness of a reader came to.
enum Step {
    /// The peer closed its side.
    Eof,
    /// This many bytes were read and all written on.
    Sent(usize),
    /// This many bytes were read; the writer took only part, the rest is still to write.
    Partial(usize, Vec<u8>),
}

async fn copy_half(
    reader: &mut ReadHalf<'_>,
    writer: &mut WriteHalf<'_>,
    total: &AtomicU64,
    metric: &IntCounter,
    activity: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    loop {
        let n = match poll_fn(|cx| forward_ready(cx, reader, writer)).await? {
            Step::Eof => {
                // Half-close: pass the EOF on, keep the other direction running.
                writer.shutdown().await?;
                return Ok(());
            }
            Step::Sent(n) => n,
            Step::Partial(n, rest) => {
                writer.write_all(&rest).await?;
                n
            }
        };
        total.fetch_add(n as u64, Ordering::Relaxed);
        metric.inc_by(n as u64);
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Reads what `reader` has into the thread's buffer and writes as much of it as `writer` takes
/// without waiting, all within one poll.
fn forward_ready(
    cx: &mut Context<'_>,
    reader: &mut ReadHalf<'_>,
    writer: &WriteHalf<'_>,
) -> Poll<io::Result<Step>> {
    CHUNK_BUF.with_borrow_mut(|buf| {
        let mut read = ReadBuf::new(buf.as_mut_slice());
        ready!(Pin::new(reader).poll_read(cx, &mut read))?;
        let data = read.filled();
        if data.is_empty() {
            return Poll::Ready(Ok(Step::Eof));
        }
        let written = match writer.try_write(data) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Poll::Ready(Err(e)),
        };
        Poll::Ready(Ok(match data.get(written..) {
            Some(rest) if !rest.is_empty() => Step::Partial(data.len(), rest.to_vec()),
            _ => Step::Sent(data.len()),
        }))
    })
}

#[cfg(test)]
mod tests;
