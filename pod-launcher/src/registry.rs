//! Does the registry already have the task's image? One `HEAD /v2/<name>/manifests/<tag>` of the
//! OCI distribution API: 200 → skip the Kaniko build, 404 → build.

use std::time::Duration;

use http::{Method, Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::spec::ImageRef;

/// Manifest media types we accept: OCI index and manifest, Docker list and v2 manifest.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Why the registry could not say.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Transport failure (refused, DNS, TLS).
    #[error("registry {url}: {source}")]
    Transport {
        /// The URL asked.
        url: String,
        /// The client's error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No answer in time.
    #[error("registry {url}: no answer within {timeout:?}")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The bound.
        timeout: Duration,
    },
    /// 401/403: credentials missing or refused.
    #[error(
        "registry {url}: {status} (set TOLLGATE_REGISTRY_USERNAME / TOLLGATE_REGISTRY_PASSWORD)"
    )]
    Unauthorized {
        /// The URL asked.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// Any other status.
    #[error("registry {url}: unexpected status {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The request could not be built (bad characters in the reference).
    #[error("registry request: {0}")]
    Request(#[from] http::Error),
    /// The system roots could not be loaded for https.
    #[error("registry tls roots: {0}")]
    Roots(#[source] std::io::Error),
}

/// The seam `submit` uses: tests pass a fixed answer or a local server.
pub trait ImageIndex {
    /// True when the registry has a manifest for the reference.
    fn has_image(
        &self,
        image: &ImageRef,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;
}

/// Basic credentials for the registry (Zot with htpasswd).
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password; never logged.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The real client: OCI distribution API over HTTP or HTTPS (system roots).
#[derive(Clone, Debug)]
pub struct OciRegistry {
    credentials: Option<Credentials>,
    timeout: Duration,
}

impl OciRegistry {
    /// A client with optional basic credentials and a per-request timeout.
    pub fn new(credentials: Option<Credentials>, timeout: Duration) -> OciRegistry {
        OciRegistry {
            credentials,
            timeout,
        }
    }
}

impl ImageIndex for OciRegistry {
    async fn has_image(&self, image: &ImageRef) -> Result<bool, RegistryError> {
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            image.registry.scheme.as_str(),
            image.registry.host,
            image.repository,
            image.tag
        );
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(RegistryError::Roots)?
            .https_or_http()
            .enable_http1()
            .build();
        let client: Client<_, Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let mut request = Request::builder()
            .method(Method::HEAD)
            .uri(&url)
            .header(header::ACCEPT, ACCEPT)
            .header(header::USER_AGENT, "tollgate-launch");
        if let Some(c) = &self.credentials {
            request = request.header(
                header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64(format!("{}:{}", c.username, c.password).as_bytes())
                ),
            );
        }
        let request = request.body(Empty::new())?;
        let response = tokio::time::timeout(self.timeout, client.request(request))
            .await
            .map_err(|_| RegistryError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })?
            .map_err(|source| RegistryError::Transport {
                url: url.clone(),
                source,
            })?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Err(RegistryError::Unauthorized { url, status })
            }
            status => Err(RegistryError::Status { url, status }),
        }
    }
}

/// Standard base64 with padding (the one use here does not justify a crate).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
