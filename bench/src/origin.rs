//! The origin: a local TLS server speaking just enough HTTP/1.1 keep-alive for the scenarios.
//!
//! Hand-rolled rather than hyper: responses are prebuilt byte strings written whole, so the
//! origin's cost per request is the TLS record work and nothing else, and it does not blur what
//! the proxies add.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Body size of `GET /1m`.
pub const BIG_BODY: usize = 1 << 20;
/// Body of `GET /small`.
pub const SMALL_BODY: &[u8] = b"hello";
/// Longest request head the origin reads before giving up on a connection.
const MAX_HEAD: usize = 16 * 1024;

/// A running origin on `127.0.0.1:<ephemeral>`; stops accepting when dropped.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    accept_loop: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

struct Responses {
    big: Vec<u8>,
    small: Vec<u8>,
    not_found: Vec<u8>,
}

impl Responses {
    fn new() -> Responses {
        let mut big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {BIG_BODY}\r\n\r\n"
        )
        .into_bytes();
        // Not all zeros, in case anything on the path ever compresses.
        big.extend((0..BIG_BODY).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let mut small = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            SMALL_BODY.len()
        )
        .into_bytes();
        small.extend_from_slice(SMALL_BODY);
        let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec();
        Responses {
            big,
            small,
            not_found,
        }
    }

    fn for_head(&self, head: &[u8]) -> &[u8] {
        if head.starts_with(b"GET /1m ") {
            &self.big
        } else if head.starts_with(b"GET /small ") {
            &self.small
        } else {
            &self.not_found
        }
    }
}

/// Binds `127.0.0.1:0` and serves TLS with `config` until dropped.
pub async fn start(config: Arc<ServerConfig>) -> Result<Origin> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(config);
    let responses = Arc::new(Responses::new());
    let accept_loop = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // EMFILE and the like: give the descriptor table a moment.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let (acceptor, responses) = (acceptor.clone(), responses.clone());
            tokio::spawn(async move {
                // A failing connection is the client's to count; the origin just drops it.
                let _ = serve(tcp, acceptor, &responses).await;
            });
        }
    });
    Ok(Origin { addr, accept_loop })
}

async fn serve(tcp: TcpStream, acceptor: TlsAcceptor, responses: &Responses) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request head too long",
                ));
            }
            if tls.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let response = responses.for_head(&buf[..head_end]);
        buf.drain(..head_end);
        tls.write_all(response).await?;
        tls.flush().await?;
    }
}

/// Position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
