//! The usual loopback setup: a CA, one upstream TLS server on 127.0.0.1, client configs, a temp
//! dir for the policy, and the standard test policy that pins every test name to that server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use rustls::ClientConfig;

use crate::clients::Curl;
use crate::pki::{ALPN_H2_HTTP11, ALPN_HTTP11, Ca};
use crate::policy::PolicySpec;
use crate::proxy::{Proxy, ProxyBuilder};
use crate::tls_server::TlsServer;

/// Every name the upstream's certificate covers.
pub const TEST_NAMES: &[&str] = &[
    "allowed.test",
    "other.test",
    "denied.test",
    "*.wild.test",
    "nonpublic.test",
    "v6.test",
    "openrouter.ai",
];

/// The loopback world of one test.
pub struct Loopback {
    /// The test CA.
    pub ca: Ca,
    /// The upstream, named `upstream` (`GET /` → `hello from upstream`).
    pub server: TlsServer,
    /// Client config offering http/1.1 only.
    pub h1: Arc<ClientConfig>,
    /// Client config offering h2 and http/1.1.
    pub h2: Arc<ClientConfig>,
    /// Scratch directory (policy file, labels file, ...).
    pub dir: tempfile::TempDir,
}

impl Loopback {
    /// Starts the upstream on 127.0.0.1:0.
    pub async fn new() -> Result<Loopback> {
        let ca = Ca::new()?;
        let server = TlsServer::bind_local("upstream", ca.server_config(TEST_NAMES)?).await?;
        let h1 = ca.client_config(ALPN_HTTP11)?;
        let h2 = ca.client_config(ALPN_H2_HTTP11)?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-test-")
            .tempdir()?;
        Ok(Loopback {
            ca,
            server,
            h1,
            h2,
            dir,
        })
    }

    /// The standard policy (agent phase):
    /// - allow `allowed.test`, `*.wild.test`, `nonpublic.test`; deny `denied.test`;
    /// - `allowed.test`, `other.test` (not allow-listed), `denied.test`, `a.wild.test` pinned to
    ///   the upstream with the loopback allowance;
    /// - `nonpublic.test` pinned to the upstream WITHOUT the allowance (must be refused).
    pub fn policy(&self) -> PolicySpec {
        let port = self.server.port();
        let mut spec = PolicySpec::new()
            .allow(&["allowed.test", "*.wild.test", "nonpublic.test"])
            .deny(&["denied.test"])
            .pin_loopback("allowed.test", port)
            .pin_loopback("other.test", port)
            .pin_loopback("denied.test", port)
            .pin_loopback("a.wild.test", port);
        spec = spec.pin("nonpublic.test", &[[127, 0, 0, 1].into()], port);
        spec
    }

    /// `<dir>/policy.toml`.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// Writes `spec` to [`Loopback::policy_path`] and returns the path.
    pub fn write_policy(&self, spec: &PolicySpec) -> Result<PathBuf> {
        let path = self.policy_path();
        spec.write(&path)?;
        Ok(path)
    }

    /// A proxy builder with `spec` written and passed as `--policy`.
    pub fn proxy_builder(&self, spec: &PolicySpec) -> Result<ProxyBuilder> {
        Ok(Proxy::builder().policy(self.write_policy(spec)?))
    }

    /// Starts the proxy with `spec`.
    pub async fn proxy(&self, spec: &PolicySpec) -> Result<Proxy> {
        self.proxy_builder(spec)?.start().await
    }

    /// curl trusting the test CA.
    pub fn curl(&self) -> Curl {
        Curl::new(self.ca.pem_path())
    }
}

/// How long a test waits for the proxy to log or count something it just did.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

impl Loopback {
    /// GETs `/` through the proxy with SNI `sni` (rustls, HTTP/1.1), asserts the upstream's
    /// answer, and returns the connection's log line.
    pub async fn assert_tunnels(&self, proxy: &Proxy, sni: &str) -> Result<serde_json::Value> {
        let tcp = tokio::net::TcpStream::connect(proxy.sni_addr()).await?;
        let peer = tcp.local_addr()?;
        let exchange = async {
            let tls = crate::clients::tls_handshake(tcp, sni, self.h1.clone()).await?;
            crate::clients::HttpConn::handshake(tls, sni)
                .await?
                .get("/")
                .await
        };
        let resp = exchange.await.map_err(|e| {
            anyhow::anyhow!("SNI {sni} should tunnel but: {e:#}\n{}", proxy.describe())
        })?;
        anyhow::ensure!(
            resp.status == 200 && resp.text() == self.server.hello_body(),
            "unexpected answer {resp:?}"
        );
        proxy.wait_for_peer(peer, SETTLE).await
    }

    /// Sends rustls's ClientHello for `sni`, asserts the proxy closes without sending one byte
    /// and without dialing the upstream, and returns the connection's log line.
    pub async fn assert_rejected(&self, proxy: &Proxy, sni: &str) -> Result<serde_json::Value> {
        let hello = crate::hello::rustls_client_hello(self.h1.clone(), sni)?;
        self.assert_rejected_bytes(proxy, &hello, sni).await
    }

    /// Sends `bytes`, asserts a silent close with no upstream connection; returns the log line.
    pub async fn assert_rejected_bytes(
        &self,
        proxy: &Proxy,
        bytes: &[u8],
        what: &str,
    ) -> Result<serde_json::Value> {
        let before_upstream = self.server.stats().connections();
        let mut client = crate::clients::RawClient::connect(proxy.sni_addr()).await?;
        let peer = client.local_addr()?;
        let closed = client.send_and_read_to_close(bytes, SETTLE).await?;
        anyhow::ensure!(
            closed.received.is_empty(),
            "{what}: the proxy must close without sending anything, but sent {} bytes\n{}",
            closed.received.len(),
            proxy.describe()
        );
        let log = proxy.wait_for_peer(peer, SETTLE).await?;
        anyhow::ensure!(
            self.server.stats().connections() == before_upstream,
            "{what}: a rejected connection must not reach the upstream\n{}",
            proxy.describe()
        );
        Ok(log)
    }
}
