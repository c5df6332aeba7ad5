//! The DNS listeners. UDP answers leave from the address the query was sent to (IP_PKTINFO /
//! IPV6_PKTINFO): a query REDIRECTed from `198.51.100.53:53` arrives for `127.0.0.1:15053`, and
//! only an answer from `127.0.0.1:15053` matches the conntrack entry that rewrites it back into
//! an answer from `198.51.100.53:53` — from a socket bound to `0.0.0.0` the kernel would pick the
//! Pod's own address, and the client would drop the answer.
//!
//! TCP: one query at a time per connection, answered in order, at most `[dns]
//! max_tcp_connections` connections, each closed after `tcp_idle_timeout` without a query.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrStorage,
    recvmsg, sendmsg, setsockopt, sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::decide::MAX_QUERY;
use super::{Dns, Step, Transport};
use crate::metrics::Metrics;

/// Binds a UDP socket for DNS with packet-info delivery on, and a TCP listener on the same port.
pub fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    // With port 0 the kernel picks a UDP port; TCP then takes the same number, retried a few
    // times in case another process holds it for TCP.
    let mut last = None;
    for _ in 0..8 {
        let udp = bind_udp(addr)?;
        let port = udp.local_addr()?.port();
        match crate::bind::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// One received datagram: the bytes, who sent it, and the address it was sent to.
struct Datagram {
    len: usize,
    peer: SocketAddr,
    local: Option<PacketInfo>,
}

#[derive(Clone, Copy)]
enum PacketInfo {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

/// Serves UDP queries until `shutdown`. Local answers are sent inline; forwarded queries run in
/// their own task, bounded by the in-flight permit `step` took.
pub async fn serve_udp(
    socket: UdpSocket,
    dns: Arc<Dns>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_QUERY + 1];
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = socket.async_io(Interest::READABLE, || receive(&socket, &mut buf)) => r,
        };
        let datagram = match received {
            Ok(d) => d,
            Err(error) => {
                metrics.accept_errors.inc();
                tracing::warn!(%error, "dns udp receive failed");
                continue;
            }
        };
        // A datagram longer than the buffer was cut (MSG_TRUNC gives its real length): the
        // whole buffer, one byte over the limit, is then passed on and dropped as too large.
        let bytes = &buf[..datagram.len.min(buf.len())];
        match dns.step(bytes, datagram.peer, Transport::Udp) {
            Step::Done(None) => {}
            Step::Done(Some(answer)) => reply(&socket, &answer, &datagram).await,
            Step::Forward(pending) => {
                let (socket, dns) = (socket.clone(), dns.clone());
                tokio::spawn(async move {
                    if let Some(answer) = dns.forward(*pending, datagram.peer, Transport::Udp).await
                    {
                        reply(&socket, &answer, &datagram).await;
                    }
                });
            }
        }
    }
}

fn receive(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Datagram> {
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_TRUNC,
    )
    .map_err(std::io::Error::from)?;
    let mut local = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(info) => local = Some(PacketInfo::V4(info)),
                ControlMessageOwned::Ipv6PacketInfo(info) => local = Some(PacketInfo::V6(info)),
                _ => {}
            }
        }
    }
    let peer = msg
        .address
        .and_then(|a| to_socket_addr(&a))
        .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok(Datagram {
        len: msg.bytes,
        peer,
        local,
    })
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::new(IpAddr::V4(v4.ip()), v4.port()));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::new(IpAddr::V6(v6.ip()), v6.port()))
}

/// Sends `answer` to the datagram's sender, from the address it was sent to.
async fn reply(socket: &UdpSocket, answer: &[u8], to: &Datagram) {
    let sent = socket
        .async_io(Interest::WRITABLE, || send(socket, answer, to))
        .await;
    if let Err(error) = sent {
        tracing::debug!(peer = %to.peer, %error, "dns udp send failed");
    }
}

fn send(socket: &UdpSocket, answer: &[u8], to: &Datagram) -> std::io::Result<()> {
    let iov = [IoSlice::new(answer)];
    let fd = socket.as_raw_fd();
    let sent = match (to.peer, to.local) {
        (SocketAddr::V4(peer), Some(PacketInfo::V4(info))) => {
            // Source = the query's destination; the routing table picks the interface.
            let out = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: info.ipi_addr,
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let cmsg = [ControlMessage::Ipv4PacketInfo(&out)];
            sendmsg(
                fd,
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&SockaddrIn::from(peer)),
            )
        }
        (SocketAddr::V6(peer), Some(PacketInfo::V6(info))) => {
            let out = libc::in6_pktinfo {
                ipi6_addr: info.ipi6_addr,
                ipi6_ifindex: 0,
            };
            let cmsg = [ControlMessage::Ipv6PacketInfo(&out)];
            sendmsg(
                fd,
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&SockaddrIn6::from(peer)),
            )
        }
        (peer, _) => {
            let addr = SockaddrStorage::from(peer);
            sendmsg(fd, &iov, &[], MsgFlags::empty(), Some(&addr))
        }
    };
    sent.map(|_| ()).map_err(std::io::Error::from)
}

/// Serves DNS over TCP until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    dns: Arc<Dns>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                metrics.accept_errors.inc();
                tracing::warn!(%error, "dns tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = dns.tcp_permit() else {
            metrics
                .connections_refused
                .with_label_values(&["dns-tcp-limit"])
                .inc();
            continue;
        };
        let (dns, stop) = (dns.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(stream, peer, &dns) => {}
            }
            drop(permit);
        });
    }
}

/// Queries in order until the client closes, goes idle, or sends something unusable.
async fn connection(mut stream: TcpStream, peer: SocketAddr, dns: &Dns) {
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        let idle = dns.tcp_idle_timeout();
        let Ok(Ok(len)) = tokio::time::timeout(idle, stream.read_u16()).await else {
            return;
        };
        let len = usize::from(len);
        if len > MAX_QUERY {
            // Count it like an oversized datagram, then close: the stream cannot be resynced
            // without reading the whole message.
            dns.dropped(super::decide::Outcome::TooLarge, peer);
            return;
        }
        let Ok(Ok(_)) = tokio::time::timeout(idle, stream.read_exact(&mut buf[..len])).await else {
            return;
        };
        let Some(answer) = dns.answer(&buf[..len], peer, Transport::Tcp).await else {
            continue;
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
