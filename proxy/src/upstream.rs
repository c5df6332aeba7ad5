//! The gateway's client to the real LLM API: TLS with the webpki roots (plus an optional extra
//! CA, for tests), HTTP/1.1 keep-alive connections pooled in [`pool`]; the policy's address pins and the non-public
//! address filter apply here exactly as they do to tunnels.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tollgate_policy::Policy;

mod pool;

pub use pool::Lease;

/// The pooled HTTPS client the gateway forwards with (HTTP/1.1 keep-alive; see [`pool`]).
#[derive(Clone)]
pub struct HttpsClient {
    pool: Arc<pool::Pool>,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The extra CA file could not be read or held no certificate.
    #[error("cannot use the extra CA file {path}: {reason}")]
    ExtraCa {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connection: resolve, connect or TLS failed (the request never left).
    #[error("client error (Connect): {0}")]
    Connect(String),
    /// The request failed on an open connection (protocol, closed mid-way).
    #[error("request failed: {0}")]
    Request(#[from] hyper::Error),
    /// No response head, or no whole body, within the timeout.
    #[error("timed out")]
    Timeout,
    /// The body broke off or was larger than the limit.
    #[error("reading failed: {0}")]
    Body(String),
}

impl FetchError {
    /// Whether the request never reached the upstream (so it cannot have generated anything).
    pub fn is_connect(&self) -> bool {
        matches!(self, FetchError::Connect(_))
    }
}

/// Sends `request`, waiting at most `timeout` for the response head. The [`Lease`] drives the
/// connection: read the body through [`read_limited`], or [`Lease::detach`] it first.
pub async fn send(
    client: &HttpsClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(Response<hyper::body::Incoming>, Lease), FetchError> {
    match tokio::time::timeout(timeout, client.pool.send(request)).await {
        Ok(sent) => sent,
        Err(_) => Err(FetchError::Timeout),
    }
}

/// Reads a whole body of at most `limit` bytes within `timeout`, driving its connection; the
/// connection goes back to the pool when the body ended cleanly.
pub async fn read_limited(
    mut lease: Lease,
    body: hyper::body::Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect());
    match lease.drive(read).await {
        Ok(Ok(collected)) => {
            lease.release();
            Ok(collected.to_bytes())
        }
        Ok(Err(error)) => Err(FetchError::Body(error.to_string())),
        Err(_) => Err(FetchError::Timeout),
    }
}

/// [`send`], then [`read_limited`]: the response head and its whole body, each within `timeout`.
pub async fn fetch(
    client: &HttpsClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    limit: usize,
) -> Result<(http::response::Parts, Bytes), FetchError> {
    let (response, lease) = send(client, request, timeout).await?;
    let (parts, body) = response.into_parts();
    let bytes = read_limited(lease, body, limit, timeout).await?;
    Ok((parts, bytes))
}

/// Builds the client: `extra_ca` adds a trust anchor to the webpki roots.
pub fn client(
    provider: Arc<CryptoProvider>,
    extra_ca: Option<&Path>,
    policy: Arc<ArcSwap<Policy>>,
    connect_timeout: Duration,
) -> Result<HttpsClient, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let err = |reason: String| BuildError::ExtraCa {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert)?;
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: per request, a keep-alive connection driven in the request's own task
    // cost less CPU and latency than one multiplexed h2 connection in a task of its own
    // (BENCHMARKS.md, issue 13). OpenRouter speaks both.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    Ok(HttpsClient {
        pool: Arc::new(pool::Pool::new(connector, policy, connect_timeout)),
    })
}
