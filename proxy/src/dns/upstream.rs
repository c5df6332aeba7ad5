//! The exchange with the upstream resolver: one fresh UDP socket per query (a random source port
//! and a random id, so an off-path forger has to guess both), TCP when the answer is truncated,
//! each resolver tried in order until one answers usably.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tollgate_policy::Phase;

use super::decide::{self, BadAnswer, Query};

/// The largest UDP answer read (we advertise 1232; some servers send more).
const UDP_BUFFER: usize = 4096;

/// Why no upstream answered usably.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No resolver configured (`[dns] upstream` empty and nothing in resolv.conf).
    #[error("no upstream resolver configured")]
    NoResolver,
    /// Every resolver failed; the last failure.
    #[error("{server}: {what}")]
    Failed {
        /// The last resolver tried.
        server: SocketAddr,
        /// What went wrong there.
        what: String,
    },
}

/// Asks each server in turn; the first usable answer, relayed for `phase` with TTLs capped.
pub async fn resolve(
    servers: &[SocketAddr],
    query: &Query,
    timeout: Duration,
    phase: Phase,
    max_ttl: u32,
) -> Result<Message, UpstreamError> {
    let mut last = UpstreamError::NoResolver;
    for &server in servers {
        match ask(server, query, timeout, phase, max_ttl).await {
            Ok(msg) => return Ok(msg),
            Err(what) => last = UpstreamError::Failed { server, what },
        }
    }
    Err(last)
}

async fn ask(
    server: SocketAddr,
    query: &Query,
    timeout: Duration,
    phase: Phase,
    max_ttl: u32,
) -> Result<Message, String> {
    let id = random_id();
    let bytes = decide::upstream_query(query, id)
        .to_vec()
        .map_err(|e| format!("encode: {e}"))?;
    let answer = tokio::time::timeout(timeout, udp(server, &bytes, id))
        .await
        .map_err(|_| "udp timeout".to_owned())?
        .map_err(|e| format!("udp: {e}"))?;
    match decide::relay(query, id, &answer, phase, max_ttl) {
        Ok(msg) => Ok(msg),
        Err(BadAnswer::Truncated) => {
            let answer = tokio::time::timeout(timeout, tcp(server, &bytes))
                .await
                .map_err(|_| "tcp timeout".to_owned())?
                .map_err(|e| format!("tcp: {e}"))?;
            decide::relay(query, id, &answer, phase, max_ttl).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Sends over a connected UDP socket and waits for a datagram with our id (others are ignored:
/// a late answer to an earlier query, or a forgery).
async fn udp(server: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let local: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let n = socket.recv(&mut buf).await?;
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// One query over TCP (two-byte length prefix each way).
async fn tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

fn random_id() -> u16 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 2];
    // The system RNG failing is not something to recover from per query; a fixed id still
    // works (the source port stays random).
    let _ = SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}
