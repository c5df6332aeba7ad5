//! One self-test connection, made by a child process so it can run as another UID.
//!
//! The parent re-executes its own binary (`/proc/self/exe __probe ...`) with
//! `std::os::unix::process::CommandExt::{uid, gid}`: std switches credentials in the child
//! between fork and exec (clearing supplementary groups), so there is no `unsafe` here and the
//! parent's threads never change identity. `/proc/self/exe` works even when the binary sits in a
//! directory the probe UID cannot search. The child prints one line, its [`TcpOutcome`] or
//! [`UdpOutcome`], and exits 0.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::{Domain, Protocol, Socket, Type};

use crate::cli::{ProbeArgs, ProbeProto};

/// Credentials a probe runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    /// UID.
    pub uid: u32,
    /// GID (supplementary groups are cleared).
    pub gid: u32,
}

/// How a TCP probe's connect ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpOutcome {
    /// The handshake completed (and the token was sent).
    Connected,
    /// RST.
    Refused,
    /// No answer within the timeout.
    TimedOut,
    /// `connect` failed at once with ENETUNREACH/EHOSTUNREACH: routing refused it before any
    /// packet reached netfilter.
    NoRoute(String),
    /// Anything else.
    Failed(String),
}

/// How a UDP probe's send ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdpOutcome {
    /// `send` failed with EPERM: netfilter dropped or rejected it in OUTPUT.
    Rejected,
    /// The datagram left.
    Sent,
    /// No route (as for TCP).
    NoRoute(String),
    /// Anything else.
    Failed(String),
}

impl std::fmt::Display for TcpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcpOutcome::Connected => f.write_str("connected"),
            TcpOutcome::Refused => f.write_str("refused"),
            TcpOutcome::TimedOut => f.write_str("timed out"),
            TcpOutcome::NoRoute(e) => write!(f, "no route ({e})"),
            TcpOutcome::Failed(e) => write!(f, "failed ({e})"),
        }
    }
}

impl std::fmt::Display for UdpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UdpOutcome::Rejected => f.write_str("rejected (EPERM)"),
            UdpOutcome::Sent => f.write_str("sent"),
            UdpOutcome::NoRoute(e) => write!(f, "no route ({e})"),
            UdpOutcome::Failed(e) => write!(f, "failed ({e})"),
        }
    }
}

/// The wire form between child and parent: `<word>[ <detail>]`.
fn encode(word: &str, detail: Option<&str>) -> String {
    match detail {
        Some(d) => format!("{word} {}", d.replace('\n', " ")),
        None => word.to_string(),
    }
}

impl TcpOutcome {
    /// One line for the parent.
    pub fn encode(&self) -> String {
        match self {
            TcpOutcome::Connected => encode("connected", None),
            TcpOutcome::Refused => encode("refused", None),
            TcpOutcome::TimedOut => encode("timeout", None),
            TcpOutcome::NoRoute(e) => encode("noroute", Some(e)),
            TcpOutcome::Failed(e) => encode("failed", Some(e)),
        }
    }

    /// Parses [`TcpOutcome::encode`].
    pub fn decode(line: &str) -> Option<TcpOutcome> {
        let (word, detail) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        Some(match word {
            "connected" => TcpOutcome::Connected,
            "refused" => TcpOutcome::Refused,
            "timeout" => TcpOutcome::TimedOut,
            "noroute" => TcpOutcome::NoRoute(detail.to_string()),
            "failed" => TcpOutcome::Failed(detail.to_string()),
            _ => return None,
        })
    }
}

impl UdpOutcome {
    /// One line for the parent.
    pub fn encode(&self) -> String {
        match self {
            UdpOutcome::Rejected => encode("rejected", None),
            UdpOutcome::Sent => encode("sent", None),
            UdpOutcome::NoRoute(e) => encode("noroute", Some(e)),
            UdpOutcome::Failed(e) => encode("failed", Some(e)),
        }
    }

    /// Parses [`UdpOutcome::encode`].
    pub fn decode(line: &str) -> Option<UdpOutcome> {
        let (word, detail) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        Some(match word {
            "rejected" => UdpOutcome::Rejected,
            "sent" => UdpOutcome::Sent,
            "noroute" => UdpOutcome::NoRoute(detail.to_string()),
            "failed" => UdpOutcome::Failed(detail.to_string()),
            _ => return None,
        })
    }
}

/// The child: makes the connection and prints the outcome. Returns the exit code.
pub fn child_main(args: &ProbeArgs) -> u8 {
    let line = match args.proto {
        ProbeProto::Tcp => tcp(
            args.connect,
            &args.token,
            Duration::from_millis(args.timeout_ms),
        )
        .encode(),
        ProbeProto::Udp => udp(args.connect, &args.token).encode(),
    };
    println!("{line}");
    0
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

fn describe(e: &io::Error) -> String {
    let errno = errno_of(e);
    if errno == Errno::UnknownErrno {
        e.to_string()
    } else {
        format!("{errno:?}: {}", errno.desc())
    }
}

/// A non-blocking connect, so an immediate routing failure (before netfilter) can be told
/// apart from an ICMP error that came back after the SYN left.
pub fn tcp(addr: SocketAddr, token: &str, timeout: Duration) -> TcpOutcome {
    let sock = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
        Ok(s) => s,
        Err(e) => return TcpOutcome::Failed(format!("socket: {}", describe(&e))),
    };
    if let Err(e) = sock.set_nonblocking(true) {
        return TcpOutcome::Failed(format!("nonblocking: {}", describe(&e)));
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) => match errno_of(&e) {
            Errno::EINPROGRESS => match wait_connected(&sock, timeout) {
                Ok(None) => {}
                Ok(Some(outcome)) | Err(outcome) => return outcome,
            },
            Errno::ENETUNREACH | Errno::EHOSTUNREACH => return TcpOutcome::NoRoute(describe(&e)),
            Errno::ECONNREFUSED => return TcpOutcome::Refused,
            _ => return TcpOutcome::Failed(describe(&e)),
        },
    }
    // Connected: send the token so the listener can tell this connection from any other.
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
    let mut stream = std::net::TcpStream::from(sock);
    let _ = stream.write_all(format!("{token}\n").as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
    TcpOutcome::Connected
}

/// `Ok(None)` when connected, else the outcome.
fn wait_connected(sock: &Socket, timeout: Duration) -> Result<Option<TcpOutcome>, TcpOutcome> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return Err(TcpOutcome::TimedOut),
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(TcpOutcome::Failed(format!("poll: {e}"))),
        }
    }
    match sock.take_error() {
        Ok(None) => Ok(None),
        Ok(Some(e)) | Err(e) => Err(match errno_of(&e) {
            Errno::ECONNREFUSED => TcpOutcome::Refused,
            Errno::ETIMEDOUT => TcpOutcome::TimedOut,
            _ => TcpOutcome::Failed(describe(&e)),
        }),
    }
}

/// One datagram on a connected UDP socket: netfilter's REJECT or DROP in OUTPUT makes `send`
/// fail with EPERM at once. A non-empty `token` is the datagram's first line, so a token
/// listener (the DNS port) can tell this datagram from any other.
pub fn udp(addr: SocketAddr, token: &str) -> UdpOutcome {
    let sock = match Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)) {
        Ok(s) => s,
        Err(e) => return UdpOutcome::Failed(format!("socket: {}", describe(&e))),
    };
    let classify = |e: io::Error| match errno_of(&e) {
        Errno::EPERM => UdpOutcome::Rejected,
        Errno::ENETUNREACH | Errno::EHOSTUNREACH => UdpOutcome::NoRoute(describe(&e)),
        _ => UdpOutcome::Failed(describe(&e)),
    };
    if let Err(e) = sock.connect(&addr.into()) {
        return classify(e);
    }
    let text = if token.is_empty() {
        "tollgate-init self-test\n".to_string()
    } else {
        format!("{token}\n")
    };
    match sock.send(text.as_bytes()) {
        Ok(_) => UdpOutcome::Sent,
        Err(e) => classify(e),
    }
}

/// Starts a probe child (`who: None` keeps the parent's credentials).
pub fn spawn(
    proto: ProbeProto,
    addr: SocketAddr,
    token: &str,
    timeout: Duration,
    who: Option<Who>,
) -> io::Result<Child> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__probe")
        .arg("--proto")
        .arg(match proto {
            ProbeProto::Tcp => "tcp",
            ProbeProto::Udp => "udp",
        })
        .arg("--connect")
        .arg(addr.to_string())
        .arg("--token")
        .arg(token)
        .arg("--timeout-ms")
        .arg(timeout.as_millis().to_string())
        // The child parses only these flags; the parent's TOLLGATE_INIT_* must not leak in.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(w) = who {
        cmd.gid(w.gid).uid(w.uid);
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn outcomes_round_trip() {
        for o in [
            TcpOutcome::Connected,
            TcpOutcome::Refused,
            TcpOutcome::TimedOut,
            TcpOutcome::NoRoute("ENETUNREACH: Network is unreachable".into()),
            TcpOutcome::Failed("x".into()),
        ] {
            assert_eq!(TcpOutcome::decode(&o.encode()), Some(o));
        }
        for o in [
            UdpOutcome::Rejected,
            UdpOutcome::Sent,
            UdpOutcome::NoRoute("n".into()),
            UdpOutcome::Failed("f".into()),
        ] {
            assert_eq!(UdpOutcome::decode(&o.encode()), Some(o));
        }
        assert_eq!(TcpOutcome::decode("garbage"), None);
    }

    #[test]
    fn tcp_probe_reaches_a_loopback_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(
            tcp(addr, "tok", Duration::from_secs(2)),
            TcpOutcome::Connected
        );
        let (mut s, _) = l.accept().unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut s, &mut got).unwrap();
        assert_eq!(got, "tok\n");
        drop(l);
        assert_eq!(
            tcp(addr, "tok", Duration::from_secs(2)),
            TcpOutcome::Refused
        );
    }
}
