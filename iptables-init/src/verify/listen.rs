//! The self-test's token listeners on the SNI, capture and DNS ports (DNS: TCP and UDP), both
//! families, standing in
//! for the proxy (which is not running yet while the init container runs).
//!
//! A port that is already taken (the proxy is up: `tollgate-init verify` in a running Pod) is
//! recorded as busy, with the UID that holds it, and probed live instead: see `verify`.

use std::io::{ErrorKind, Read};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::family::Family;
use crate::host;

/// Which of tollgate's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// `--sni-port`.
    Sni,
    /// `--capture-port`.
    Capture,
    /// `--dns-port` (TCP and UDP).
    Dns,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Port::Sni => "SNI",
            Port::Capture => "capture",
            Port::Dns => "DNS",
        })
    }
}

/// A connection one of the token listeners accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Where it arrived.
    pub port: Port,
    /// The first line it sent.
    pub token: String,
    /// SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST of the accepted socket.
    pub orig_dst: Option<SocketAddr>,
}

/// One port in one family.
enum Slot {
    Token(TcpListener),
    /// Taken by someone else; the UID from /proc/net/tcp{,6} if found.
    Busy(Option<u32>),
}

/// The token listeners.
pub struct Listeners {
    slots: Vec<(Port, Family, Slot)>,
    /// UDP token sockets on the DNS port; `None`: taken (the proxy is running).
    udp: Vec<(Family, Option<UdpSocket>)>,
    arrivals: Vec<Arrival>,
}

impl Listeners {
    /// Binds `[0.0.0.0 | ::]:port` for both ports in each family. A taken port becomes busy;
    /// any other bind error is returned with its family.
    pub fn bind(
        sni_port: u16,
        capture_port: u16,
        dns_port: u16,
        families: &[Family],
    ) -> Result<Listeners, (Family, String)> {
        let mut slots = Vec::new();
        let mut udp = Vec::new();
        for &family in families {
            match listen_udp(family, dns_port) {
                Ok(s) => udp.push((family, Some(s))),
                Err(e) if e.kind() == ErrorKind::AddrInUse => udp.push((family, None)),
                Err(e) => {
                    return Err((
                        family,
                        format!("cannot listen on the DNS port {dns_port} (udp): {e}"),
                    ));
                }
            }
            for (port, number) in [
                (Port::Sni, sni_port),
                (Port::Capture, capture_port),
                (Port::Dns, dns_port),
            ] {
                let slot = match listen(family, number) {
                    Ok(l) => Slot::Token(l),
                    Err(e) if e.kind() == ErrorKind::AddrInUse => {
                        Slot::Busy(host::listener_owner(family, number))
                    }
                    Err(e) => {
                        return Err((
                            family,
                            format!("cannot listen on the {port} port {number}: {e}"),
                        ));
                    }
                };
                slots.push((port, family, slot));
            }
        }
        Ok(Listeners {
            slots,
            udp,
            arrivals: Vec::new(),
        })
    }

    /// Whether the UDP DNS port was taken in `family`.
    pub fn udp_busy(&self, family: Family) -> bool {
        self.udp.iter().any(|(f, s)| *f == family && s.is_none())
    }

    /// `Some(owner)` when `port` was taken in `family` (owner UID if known).
    pub fn busy(&self, port: Port, family: Family) -> Option<Option<u32>> {
        self.slots.iter().find_map(|(p, f, s)| match s {
            Slot::Busy(owner) if *p == port && *f == family => Some(*owner),
            _ => None,
        })
    }

    /// Accepts whatever is pending on every listener and records it.
    pub fn sweep(&mut self) {
        let mut datagram = [0u8; 512];
        for socket in self.udp.iter().filter_map(|(_, s)| s.as_ref()) {
            while let Ok(n) = socket.recv(&mut datagram) {
                let text = String::from_utf8_lossy(&datagram[..n]);
                self.arrivals.push(Arrival {
                    port: Port::Dns,
                    token: text.lines().next().unwrap_or_default().to_string(),
                    orig_dst: None,
                });
            }
        }
        for (port, family, slot) in &self.slots {
            let Slot::Token(listener) = slot else {
                continue;
            };
            while let Ok((stream, _)) = listener.accept() {
                let orig_dst = original_dst(&stream, *family);
                self.arrivals.push(Arrival {
                    port: *port,
                    token: read_token(stream),
                    orig_dst,
                });
            }
        }
    }

    /// Removes and returns the arrival that carried `token`.
    pub fn take(&mut self, token: &str) -> Option<Arrival> {
        let i = self.arrivals.iter().position(|a| a.token == token)?;
        Some(self.arrivals.remove(i))
    }
}

fn listen(family: Family, port: u16) -> std::io::Result<TcpListener> {
    let (domain, addr) = match family {
        Family::V4 => (
            Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        ),
        Family::V6 => (
            Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ),
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if family == Family::V6 {
        // Like the proxy: separate sockets per family, so [::] must not also take IPv4.
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(64)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn listen_udp(family: Family, port: u16) -> std::io::Result<UdpSocket> {
    let addr = match family {
        Family::V4 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        Family::V6 => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    };
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if family == Family::V6 {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn read_token(mut stream: TcpStream) -> String {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 128];
    while buf.len() < 256 && !buf.contains(&b'\n') {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.lines().next().unwrap_or_default().to_string()
}

fn original_dst(stream: &TcpStream, family: Family) -> Option<SocketAddr> {
    match family {
        Family::V4 => getsockopt(stream, sockopt::OriginalDst).ok().map(|sin| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }),
        Family::V6 => getsockopt(stream, sockopt::Ip6tOriginalDst)
            .ok()
            .map(|sin6| {
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    0,
                    0,
                ))
            }),
    }
}
