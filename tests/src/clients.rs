//! Clients that talk to the proxy the way an agent would: a rustls + hyper HTTP/1.1 client with a
//! chosen SNI, curl (HTTP/1.1 or h2, optionally inside a namespace), and a raw TCP client that
//! sends arbitrary bytes, drips them, and reports how the proxy closed the connection.

use std::future::Future as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long a single client operation may take before the test calls it hung.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS over `tcp` with `sni` as the server name (and the name the certificate must match).
pub async fn tls_handshake<S>(tcp: S, sni: &str, config: Arc<ClientConfig>) -> Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name =
        ServerName::try_from(sni.to_string()).with_context(|| format!("server name {sni:?}"))?;
    let tls = tokio::time::timeout(IO_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake with SNI {sni} timed out"))?
        .with_context(|| format!("TLS handshake with SNI {sni}"))?;
    Ok(tls)
}

/// Connects to `addr` (the proxy) and completes TLS with `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    tls_handshake(tcp, sni, config).await
}

/// An HTTP/1.1 response, fully read.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 connection over any stream (usually TLS through the proxy): successive
/// requests reuse the same TCP connection, which is how tests hold a tunnel open across events.
pub struct HttpConn {
    sender: SendRequest<Empty<Bytes>>,
    host: String,
    conn: tokio::task::JoinHandle<()>,
}

impl HttpConn {
    /// HTTP/1.1 handshake over `io`; `host` goes into the Host header.
    pub async fn handshake<S>(io: S, host: &str) -> Result<HttpConn>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            host: host.to_string(),
            conn,
        })
    }

    /// Connects through `addr` with TLS SNI `sni` and prepares HTTP/1.1 on it.
    pub async fn connect(
        addr: SocketAddr,
        sni: &str,
        config: Arc<ClientConfig>,
    ) -> Result<HttpConn> {
        let tls = tls_connect(addr, sni, config).await?;
        HttpConn::handshake(tls, sni).await
    }

    /// Sends `GET path` and returns the response head with a streaming body.
    pub async fn get_streaming(
        &mut self,
        path: &str,
        close: bool,
    ) -> Result<hyper::Response<Incoming>> {
        let mut req = hyper::Request::get(path).header(hyper::header::HOST, &self.host);
        if close {
            req = req.header(hyper::header::CONNECTION, "close");
        }
        let req = req.body(Empty::new())?;
        tokio::time::timeout(IO_TIMEOUT, async {
            self.sender.ready().await?;
            Ok::<_, anyhow::Error>(self.sender.send_request(req).await?)
        })
        .await
        .map_err(|_| anyhow!("GET {path} timed out"))?
    }

    /// Sends `GET path` and reads the whole response.
    pub async fn get(&mut self, path: &str) -> Result<HttpResponse> {
        let resp = self.get_streaming(path, false).await?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(IO_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| anyhow!("reading body of GET {path} timed out"))??
            .to_bytes();
        Ok(HttpResponse { status, body })
    }

    /// True while the underlying connection is still usable.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// One-shot: TLS to `addr` with SNI `sni`, `GET path` over HTTP/1.1.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<HttpResponse> {
    HttpConn::connect(addr, sni, config).await?.get(path).await
}

/// Reads the next data chunk of a streaming body (None at the end).
pub async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>> {
    loop {
        let frame = tokio::time::timeout(IO_TIMEOUT, body.frame())
            .await
            .map_err(|_| anyhow!("waiting for a body chunk timed out"))?;
        match frame {
            None => return Ok(None),
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// How to run curl.
#[derive(Clone, Debug)]
pub struct Curl {
    /// CA file for `--cacert`.
    pub ca: PathBuf,
    /// Ask for h2 (`--http2`) instead of forcing `--http1.1`.
    pub http2: bool,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// `--max-time`.
    pub max_time: Duration,
}

/// What curl did.
#[derive(Debug)]
pub struct CurlOutput {
    /// curl's exit code (0 = success; 35 = TLS handshake failed, 56 = recv failure, ...).
    pub code: i32,
    /// Response body.
    pub body: String,
    /// `%{http_version}`: "1.1", "2", or "0" when no response came.
    pub http_version: String,
    /// curl's stderr (`-sS`: the error message).
    pub stderr: String,
}

const VERSION_MARK: &str = "\n--tollgate-http-version=";

impl Curl {
    /// curl trusting `ca`, HTTP/1.1, on the host, 10 s max.
    pub fn new(ca: impl Into<PathBuf>) -> Curl {
        Curl {
            ca: ca.into(),
            http2: false,
            netns: None,
            max_time: IO_TIMEOUT,
        }
    }

    /// Same, asking for h2.
    pub fn http2(mut self) -> Curl {
        self.http2 = true;
        self
    }

    /// Same, run inside namespace `ns`.
    pub fn in_netns(mut self, ns: &str) -> Curl {
        self.netns = Some(ns.to_string());
        self
    }

    /// `GET https://host:PORT/path` with `host` resolved to `proxy` (like an agent whose DNS
    /// answer was redirected to the proxy): the TLS SNI is `host`.
    pub async fn get(&self, host: &str, proxy: SocketAddr, path: &str) -> Result<CurlOutput> {
        let port = proxy.port();
        let ip = match proxy {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, "curl"]);
                c
            }
            None => tokio::process::Command::new("curl"),
        };
        cmd.arg("-sS")
            .arg("--max-time")
            .arg(format!("{:.1}", self.max_time.as_secs_f64()))
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--resolve")
            .arg(format!("{host}:{port}:{ip}"))
            .arg(if self.http2 { "--http2" } else { "--http1.1" })
            .arg("--write-out")
            .arg(format!("{VERSION_MARK}%{{http_version}}"))
            .arg(format!("https://{host}:{port}{path}"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(self.max_time + Duration::from_secs(5), cmd.output())
            .await
            .map_err(|_| anyhow!("curl did not exit"))?
            .context("running curl (is it installed?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, http_version) = match stdout.rsplit_once(VERSION_MARK) {
            Some((b, v)) => (b.to_string(), v.trim().to_string()),
            None => (stdout.clone(), String::new()),
        };
        Ok(CurlOutput {
            code: out.status.code().unwrap_or(-1),
            body,
            http_version,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// How a connection ended, seen from the client.
#[derive(Debug)]
pub struct Closed {
    /// Everything the peer sent before closing.
    pub received: Vec<u8>,
    /// True when it ended with a reset rather than a FIN.
    pub reset: bool,
    /// Time from the start of the read (or of the drip) to the close.
    pub elapsed: Duration,
}

/// A plain TCP client for bytes no TLS library would send.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<RawClient> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        RawClient::from_stream(stream)
    }

    /// Wraps an already connected std socket (e.g. one made inside a namespace).
    pub fn from_std(stream: std::net::TcpStream) -> Result<RawClient> {
        stream.set_nonblocking(true)?;
        RawClient::from_stream(TcpStream::from_std(stream)?)
    }

    fn from_stream(stream: TcpStream) -> Result<RawClient> {
        stream.set_nodelay(true)?;
        Ok(RawClient { stream })
    }

    /// The client's own address: the `peer` the proxy logs for this connection.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// Writes all of `bytes` (an error here usually means the proxy already closed).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads until the proxy closes the connection (FIN or RST); fails after `timeout`.
    pub async fn read_to_close(&mut self, timeout: Duration) -> Result<Closed> {
        let start = Instant::now();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Err(_) => bail!(
                    "connection still open after {timeout:?} ({} bytes received)",
                    received.len()
                ),
                Ok(Ok(0)) => {
                    return Ok(Closed {
                        received,
                        reset: false,
                        elapsed: start.elapsed(),
                    });
                }
                Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => {
                    return Ok(Closed {
                        received,
                        reset: true,
                        elapsed: start.elapsed(),
                    });
                }
            }
        }
    }

    /// Sends `bytes` then reads until close: the usual shape of a rejection test.
    pub async fn send_and_read_to_close(
        &mut self,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<Closed> {
        // A proxy may close before reading everything; that is fine, the close is what we want.
        let _ = self.send(bytes).await;
        self.read_to_close(timeout).await
    }

    /// Writes `bytes` one at a time, `every` apart, while watching for the proxy to close the
    /// connection; returns how many bytes went out and when the close came. Fails after `timeout`.
    pub async fn drip_until_closed(
        &mut self,
        bytes: &[u8],
        every: Duration,
        timeout: Duration,
    ) -> Result<(usize, Closed)> {
        let start = Instant::now();
        let (mut rd, mut wr) = self.stream.split();
        let mut sent = 0usize;
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        let mut next = tokio::time::Instant::now();
        loop {
            if start.elapsed() >= timeout {
                bail!("still open after dripping {sent} bytes for {timeout:?}");
            }
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return Ok((sent, Closed { received, reset: false, elapsed: start.elapsed() })),
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    Err(_) => return Ok((sent, Closed { received, reset: true, elapsed: start.elapsed() })),
                },
                _ = tokio::time::sleep_until(next) => {
                    if sent < bytes.len() {
                        if wr.write_all(&bytes[sent..=sent]).await.is_err() {
                            let reset = true;
                            return Ok((sent, Closed { received, reset, elapsed: start.elapsed() }));
                        }
                        sent += 1;
                    }
                    next += every;
                }
            }
        }
    }

    /// The underlying stream (e.g. to run TLS over it after sending raw bytes).
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }
}

/// A stream wrapper that hands at most `max` bytes to each write and waits `pause` between
/// writes, so the first flight (the ClientHello) reaches the proxy in many small TCP segments.
pub struct Trickle<S> {
    inner: S,
    max: usize,
    pause: Duration,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Trickle<S> {
    /// Wraps `inner`; each write passes at most `max` bytes, `pause` after the previous one.
    pub fn new(inner: S, max: usize, pause: Duration) -> Trickle<S> {
        Trickle {
            inner,
            max: max.max(1),
            pause,
            wait: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Trickle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Trickle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(wait) = self.wait.as_mut() {
            std::task::ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        let n = buf.len().min(self.max);
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..n]))?;
        if !self.pause.is_zero() {
            self.wait = Some(Box::pin(tokio::time::sleep(self.pause)));
        }
        Poll::Ready(Ok(written))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
