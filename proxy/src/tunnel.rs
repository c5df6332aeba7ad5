//! The tunnel: dial the SNI host as the proxy resolves it, replay the ClientHello, copy both ways.
//!
//! The original destination is never dialled: an allowed SNI aimed at another address would
//! otherwise be an open door. Resolved (or pinned) addresses pass the [`address`] filter first.

pub mod address;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

/// Copy buffer for a fresh tunnel direction, and the size bulk transfers grow it to.
const SMALL_BUF: usize = 16 * 1024;
const LARGE_BUF: usize = 64 * 1024;

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
pub async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    replay: &[u8],
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
            up_w.write_all(replay).await?;
            up.fetch_add(replay.len() as u64, Ordering::Relaxed);
            counters.up.inc_by(replay.len() as u64);
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

async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    total: &AtomicU64,
    metric: &IntCounter,
    activity: &AtomicU64,
    start: Instant,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Start at one TLS record's worth and grow only for bulk transfers (a read that fills the
    // buffer); `read_buf` fills spare capacity, so no zeroing on connections that stay small.
    let mut buf: Vec<u8> = Vec::with_capacity(SMALL_BUF);
    loop {
        buf.clear();
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            // Half-close: pass the EOF on, keep the other direction running.
            writer.shutdown().await?;
            return Ok(());
        }
        writer.write_all(&buf[..n]).await?;
        total.fetch_add(n as u64, Ordering::Relaxed);
        metric.inc_by(n as u64);
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == buf.capacity() && buf.capacity() < LARGE_BUF {
            buf.reserve_exact(LARGE_BUF - buf.len());
        }
    }
}

#[cfg(test)]
mod tests;
