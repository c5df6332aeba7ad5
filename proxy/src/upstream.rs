//! The gateway's client to the real LLM API: TLS with the webpki roots (plus an optional extra
//! CA, for tests), HTTP/2 when offered, pooled; the policy's address pins and the non-public
//! address filter apply here exactly as they do to tunnels.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tollgate_policy::Policy;

use crate::tunnel::address;
use crate::tunnel::{Resolve, SystemResolver};

/// The pooled HTTPS client the gateway forwards with.
pub type HttpsClient = Client<HttpsConnector<HttpConnector<PinnedResolver>>, Full<Bytes>>;

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
    /// The request failed (connect, TLS, protocol).
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
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
        matches!(self, FetchError::Request(e) if e.is_connect())
    }
}

/// Sends `request`, waiting at most `timeout` for the response head.
pub async fn send(
    client: &HttpsClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Response<hyper::body::Incoming>, FetchError> {
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(response) => Ok(response?),
        Err(_) => Err(FetchError::Timeout),
    }
}

/// Reads a whole body of at most `limit` bytes within `timeout`.
pub async fn read_limited<B>(body: B, limit: usize, timeout: Duration) -> Result<Bytes, FetchError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
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
    let (parts, body) = send(client, request, timeout).await?.into_parts();
    let bytes = read_limited(body, limit, timeout).await?;
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
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(PinnedResolver {
        policy,
        system: SystemResolver,
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

/// Resolves upstream hosts the way tunnels do: the policy's pins first, else the system
/// resolver; either way only addresses the address filter permits for that host.
#[derive(Clone)]
pub struct PinnedResolver {
    policy: Arc<ArcSwap<Policy>>,
    system: SystemResolver,
}

impl tower_service::Service<Name> for PinnedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.load_full();
        let system = self.system;
        Box::pin(async move {
            let host = name.as_str().to_ascii_lowercase();
            let rule = policy.host_rule(&host);
            // HttpConnector replaces the port with the URI's; 0 here is a placeholder.
            let addrs: Vec<SocketAddr> = match rule.filter(|r| !r.pin.is_empty()) {
                Some(rule) => rule.pin.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
                None => system.resolve(&host, 0).await?,
            };
            let allowed = rule.map_or(&[][..], |r| r.allow_ranges.as_slice());
            let permitted: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| address::permitted(a.ip(), allowed))
                .collect();
            if permitted.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} resolves only to non-public addresses the policy does not allow"
                    ),
                ));
            }
            Ok(permitted.into_iter())
        })
    }
}
