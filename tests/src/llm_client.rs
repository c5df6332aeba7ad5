//! Clients that talk to an LLM API the way an agent's SDK does: hyper over rustls (HTTP/1.1 or
//! h2, one connection per request, the body readable chunk by chunk and the connection droppable
//! mid-stream), and curl (`--http1.1` / `--http2`) for POSTs, collected or read line by line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::clients::{IO_TIMEOUT, tls_connect};
use crate::pki::{ALPN_H2_HTTP11, ALPN_HTTP11, provider};

/// A client config trusting exactly the certificates in `pem`, offering `alpn`.
pub fn client_config_from_pem(pem: &[u8], alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.context("a certificate in the PEM")?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "no certificate in the PEM");
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The HTTP version spoken (`HTTP/1.1`, `HTTP/2.0`).
    pub version: String,
    /// Whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response whose body is still arriving, with the connection it came on. Dropping it (or
/// [`Exchange::disconnect`]) closes the connection: the way an agent hangs up mid-stream.
pub struct Exchange {
    /// Head and streaming body.
    pub response: Response<Incoming>,
    conn: tokio::task::JoinHandle<()>,
}

impl Exchange {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.response.status().as_u16()
    }

    /// The next data chunk (None at the end); fails after `IO_TIMEOUT` or on a broken body.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        crate::clients::next_chunk(self.response.body_mut()).await
    }

    /// Reads chunks until the text received so far contains `needle`; returns all of it.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.body_mut().frame())
                .await
                .map_err(|_| anyhow!("no {needle:?} within {timeout:?}; got {seen:?}"))?;
            match chunk {
                None => bail!("body ended before {needle:?}; got {seen:?}"),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        seen.push_str(&String::from_utf8_lossy(&data));
                    }
                }
            }
        }
        Ok(seen)
    }

    /// Reads the rest of the body: Ok(text) at a clean end, Err(text so far, error) otherwise
    /// ([`TIMED_OUT`] when nothing came for `IO_TIMEOUT`: a hang, not a cut).
    pub async fn read_to_end(&mut self) -> std::result::Result<String, (String, String)> {
        let mut seen = String::new();
        loop {
            match tokio::time::timeout(IO_TIMEOUT, self.response.body_mut().frame()).await {
                Err(_) => return Err((seen, TIMED_OUT.into())),
                Ok(None) => return Ok(seen),
                Ok(Some(Err(e))) => return Err((seen, e.to_string())),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        seen.push_str(&String::from_utf8_lossy(&data));
                    }
                }
            }
        }
    }

    /// Closes the connection now, with the body unread.
    pub fn disconnect(self) {
        drop(self);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The error [`Exchange::read_to_end`] reports when the body stalled rather than broke.
pub const TIMED_OUT: &str = "timed out";

/// An HTTPS client for one host reached at a given address (the gateway's listener, or the fake
/// directly), one TLS connection per request.
#[derive(Clone)]
pub struct LlmClient {
    addr: SocketAddr,
    sni: String,
    authority: String,
    http2: bool,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    /// `Authorization` sent by [`LlmClient::post_json`] (None: no header).
    pub authorization: Option<String>,
}

impl LlmClient {
    /// A client for `host` at `addr`, trusting the CA certificate(s) in `ca_pem`; HTTP/1.1,
    /// `Authorization: Bearer sk-or-v1-agent-key`.
    pub fn new(addr: SocketAddr, host: &str, ca_pem: &[u8]) -> Result<LlmClient> {
        Ok(LlmClient {
            addr,
            sni: host.into(),
            authority: host.into(),
            http2: false,
            h1: client_config_from_pem(ca_pem, ALPN_HTTP11)?,
            h2: client_config_from_pem(ca_pem, ALPN_H2_HTTP11)?,
            authorization: Some(format!("Bearer {AGENT_KEY}")),
        })
    }

    /// The same client speaking h2.
    pub fn h2(&self) -> LlmClient {
        let mut c = self.clone();
        c.http2 = true;
        c
    }

    /// The same client with another `Host` / `:authority` (e.g. `openrouter.ai:15443`).
    pub fn authority(&self, authority: &str) -> LlmClient {
        let mut c = self.clone();
        c.authority = authority.into();
        c
    }

    /// The same client with another (or no) `Authorization`.
    pub fn with_auth(&self, authorization: Option<&str>) -> LlmClient {
        let mut c = self.clone();
        c.authorization = authorization.map(str::to_owned);
        c
    }

    /// Sends a request and returns as soon as the response head arrives.
    pub async fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Exchange> {
        let config = if self.http2 { &self.h2 } else { &self.h1 };
        let tls = tls_connect(self.addr, &self.sni, config.clone()).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        anyhow::ensure!(
            h2 == self.http2,
            "asked for h2={} but ALPN chose {:?}",
            self.http2,
            tls.get_ref().1.alpn_protocol().map(String::from_utf8_lossy)
        );
        let mut req = Request::builder().method(method);
        req = if h2 {
            req.uri(format!("https://{}{path}", self.authority))
        } else {
            req.uri(path).header(hyper::header::HOST, &self.authority)
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body))?;
        let io = TokioIo::new(tls);
        let exchange = async {
            if h2 {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                let conn = tokio::spawn(async move {
                    let _ = conn.await;
                });
                let response = sender.send_request(req).await?;
                Ok::<_, anyhow::Error>(Exchange { response, conn })
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                let conn = tokio::spawn(async move {
                    let _ = conn.await;
                });
                let response = sender.send_request(req).await?;
                Ok(Exchange { response, conn })
            }
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("{method} {path}: no response head within {IO_TIMEOUT:?}"))?
    }

    /// Sends a request and reads the whole response.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply> {
        let mut ex = self.open(method, path, headers, body).await?;
        let status = ex.status();
        let version = format!("{:?}", ex.response.version());
        let headers = ex.response.headers().clone();
        let body = tokio::time::timeout(IO_TIMEOUT, ex.response.body_mut().collect())
            .await
            .map_err(|_| anyhow!("{method} {path}: body not complete within {IO_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path}: reading the body"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            version,
            body,
        })
    }

    /// The headers an SDK sends with a JSON POST, plus `extra`.
    fn json_headers<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut h = vec![("content-type", "application/json")];
        if let Some(a) = &self.authorization {
            h.push(("authorization", a.as_str()));
        }
        h.extend_from_slice(extra);
        h
    }

    /// POSTs `body` as JSON with the client's Authorization; reads the whole response.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Reply> {
        self.post_json_with(path, body, &[]).await
    }

    /// Like [`LlmClient::post_json`] with extra headers.
    pub async fn post_json_with(
        &self,
        path: &str,
        body: &Value,
        extra: &[(&str, &str)],
    ) -> Result<Reply> {
        let headers = self.json_headers(extra);
        self.send("POST", path, &headers, Bytes::from(body.to_string()))
            .await
    }

    /// POSTs `body`, bytes as given, as JSON (for bodies a `Value` would re-serialise).
    pub async fn post_raw_json(&self, path: &str, body: impl Into<Bytes>) -> Result<Reply> {
        let headers = self.json_headers(&[]);
        self.send("POST", path, &headers, body.into()).await
    }

    /// POSTs `body` as JSON and returns once the response head arrived (for streams).
    pub async fn post_json_streaming(&self, path: &str, body: &Value) -> Result<Exchange> {
        let headers = self.json_headers(&[]);
        self.open("POST", path, &headers, Bytes::from(body.to_string()))
            .await
    }

    /// `GET path` with the client's Authorization.
    pub async fn get(&self, path: &str) -> Result<Reply> {
        let auth;
        let headers: Vec<(&str, &str)> = match &self.authorization {
            Some(a) => {
                auth = a.clone();
                vec![("authorization", auth.as_str())]
            }
            None => Vec::new(),
        };
        self.send("GET", path, &headers, Bytes::new()).await
    }
}

/// The API key the tests' agent sends.
pub const AGENT_KEY: &str = "sk-or-v1-agent-key";

/// curl POSTing JSON to `https://host:port<path>` with `host` resolved to `addr`.
#[derive(Clone, Debug)]
pub struct CurlPost {
    /// CA file for `--cacert`.
    pub ca: PathBuf,
    /// `--http2` instead of `--http1.1`.
    pub http2: bool,
    /// The host name (SNI and URL).
    pub host: String,
    /// Where `host` is resolved to.
    pub addr: SocketAddr,
    /// Headers (`Name: value`).
    pub headers: Vec<String>,
}

/// What curl got.
#[derive(Debug)]
pub struct CurlReply {
    /// curl's exit code.
    pub code: i32,
    /// HTTP status (0 when none).
    pub status: u16,
    /// `%{http_version}`.
    pub http_version: String,
    /// Response headers, raw.
    pub head: String,
    /// Body.
    pub body: String,
    /// curl's stderr.
    pub stderr: String,
}

impl CurlReply {
    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl CurlPost {
    /// curl for `host` at `addr` trusting `ca`, HTTP/1.1, JSON with the agent's key.
    pub fn new(ca: &Path, host: &str, addr: SocketAddr) -> CurlPost {
        CurlPost {
            ca: ca.to_path_buf(),
            http2: false,
            host: host.into(),
            addr,
            headers: vec![
                "Content-Type: application/json".into(),
                format!("Authorization: Bearer {AGENT_KEY}"),
            ],
        }
    }

    /// The same, with `--http2`.
    pub fn http2(mut self) -> CurlPost {
        self.http2 = true;
        self
    }

    /// Adds a header line (`Name: value`).
    pub fn header(mut self, line: &str) -> CurlPost {
        self.headers.push(line.into());
        self
    }

    fn command(&self, method: &str, path: &str, head_file: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.arg("-sS")
            .arg("-N")
            .arg("--max-time")
            .arg("20")
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--resolve")
            .arg(format!(
                "{}:{}:{}",
                self.host,
                self.addr.port(),
                self.addr.ip()
            ))
            .arg(if self.http2 { "--http2" } else { "--http1.1" })
            .arg("-X")
            .arg(method)
            .arg("-D")
            .arg(head_file);
        for h in &self.headers {
            cmd.arg("-H").arg(h);
        }
        cmd.arg(format!("https://{}:{}{path}", self.host, self.addr.port()))
            .kill_on_drop(true);
        cmd
    }

    /// Runs `curl -X method` with `body` (if any) and collects everything.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<CurlReply> {
        let dir = tempfile::tempdir()?;
        let head_file = dir.path().join("head");
        let marker = "\n--tollgate-curl=";
        let mut cmd = self.command(method, path, &head_file);
        cmd.arg("--write-out")
            .arg(format!("{marker}%{{http_code}} %{{http_version}}"));
        if body.is_some() {
            cmd.arg("--data-binary").arg("@-");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running curl (is it installed?)")?;
        let mut stdin = child.stdin.take().context("curl stdin")?;
        if let Some(b) = body {
            stdin.write_all(b.to_string().as_bytes()).await?;
        }
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .map_err(|_| anyhow!("curl did not exit"))??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = stdout.rsplit_once(marker).unwrap_or((&stdout, "0 0"));
        let mut tail = tail.split_whitespace();
        let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let http_version = tail.next().unwrap_or("").to_string();
        Ok(CurlReply {
            code: out.status.code().unwrap_or(-1),
            status,
            http_version,
            head: std::fs::read_to_string(&head_file).unwrap_or_default(),
            body: body.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// POSTs `body` and collects everything.
    pub async fn post(&self, path: &str, body: &Value) -> Result<CurlReply> {
        self.send("POST", path, Some(body)).await
    }

    /// POSTs `body` and returns curl's stdout as lines as they arrive (`curl -N`): a stream
    /// observed the way a CLI agent would see it.
    pub async fn post_lines(&self, path: &str, body: &Value) -> Result<CurlLines> {
        let dir = tempfile::tempdir()?;
        let head_file = dir.path().join("head");
        let mut cmd = self.command("POST", path, &head_file);
        cmd.arg("--data-binary")
            .arg("@-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running curl (is it installed?)")?;
        let mut stdin = child.stdin.take().context("curl stdin")?;
        stdin.write_all(body.to_string().as_bytes()).await?;
        drop(stdin);
        let stdout = child.stdout.take().context("curl stdout")?;
        Ok(CurlLines {
            lines: BufReader::new(stdout).lines(),
            child,
            _dir: dir,
        })
    }
}

/// A running `curl -N`, read line by line.
pub struct CurlLines {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl CurlLines {
    /// The next line of output (None at the end); fails after `timeout`.
    pub async fn next_line(&mut self, timeout: Duration) -> Result<Option<String>> {
        tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .map_err(|_| anyhow!("no line from curl within {timeout:?}"))?
            .context("reading curl's output")
    }

    /// Reads lines until one contains `needle`; returns every line read.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left).await {
                Ok(Some(line)) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return Ok(seen);
                    }
                }
                Ok(None) => bail!("curl's output ended before {needle:?}: {seen:?}"),
                Err(e) => bail!("{e:#}; lines so far: {seen:?}"),
            }
        }
    }

    /// Waits for curl to exit; returns its exit code.
    pub async fn wait(mut self) -> Result<i32> {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .map_err(|_| anyhow!("curl did not exit"))??;
        Ok(status.code().unwrap_or(-1))
    }
}
