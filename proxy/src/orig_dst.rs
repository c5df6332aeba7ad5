//! The original destination of a redirected connection (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
//!
//! An OS edge, so it sits behind a trait: tests substitute a fixed answer (linkerd2-proxy's
//! MockOrigDst), production asks netfilter's conntrack through nix.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// Looks up where a connection was going before it was redirected to us.
pub trait OrigDst: Send + Sync + 'static {
    /// The pre-REDIRECT destination, or `None` when the connection was not redirected.
    fn original_dst(&self, stream: &TcpStream) -> Option<SocketAddr>;
}

/// Asks the kernel (conntrack) through SO_ORIGINAL_DST or IP6T_SO_ORIGINAL_DST.
#[derive(Clone, Copy, Debug, Default)]
pub struct Netfilter;

impl OrigDst for Netfilter {
    fn original_dst(&self, stream: &TcpStream) -> Option<SocketAddr> {
        let local = stream.local_addr().ok()?;
        let orig = match local {
            SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).ok().map(|sin| {
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                ))
            }),
            SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst)
                .ok()
                .map(|sin6| {
                    SocketAddr::V6(SocketAddrV6::new(
                        Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                        u16::from_be(sin6.sin6_port),
                        0,
                        0,
                    ))
                }),
        }?;
        // conntrack reports the local address itself for connections that were not NATed.
        (orig != local).then_some(orig)
    }
}
