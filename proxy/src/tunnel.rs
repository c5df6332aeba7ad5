//! The tunnel: dial the SNI host as the proxy resolves it, replay the ClientHello, copy both ways.
//!
//! The original destination is never dialled: an allowed SNI aimed at another address would
//! otherwise be an open door. Resolved (or pinned) addresses pass the [`address`] filter first.

pub mod address;
mod splice;

pub use splice::{Counters, splice};

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

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

#[cfg(test)]
mod tests;
