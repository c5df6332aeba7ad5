//! A throwaway certificate authority for one test: server certificates for the names a test
//! routes, rustls configs on the ring provider, and the CA certificate as a PEM file for curl.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocols offered by the test server and by HTTP clients that want to negotiate h2.
pub const ALPN_H2_HTTP11: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for a client that speaks HTTP/1.1 only.
pub const ALPN_HTTP11: &[&[u8]] = &[b"http/1.1"];

/// The ring crypto provider, which this workspace uses instead of aws-lc-rs.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA: issues leaf certificates and knows how to build configs that trust it.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_file: tempfile::NamedTempFile,
}

/// A leaf certificate chain and its private key.
pub struct Leaf {
    /// The leaf followed by the CA certificate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

impl Ca {
    /// Generates a fresh CA and writes its certificate to a temporary PEM file.
    pub fn new() -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let mut pem_file = tempfile::Builder::new()
            .prefix("tollgate-test-ca-")
            .suffix(".pem")
            .tempfile()?;
        std::io::Write::write_all(&mut pem_file, issuer.pem().as_bytes())?;
        // Readable by curl even when it runs as another user.
        std::fs::set_permissions(
            pem_file.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
        Ok(Ca { issuer, pem_file })
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Path of the CA PEM file (for `curl --cacert`).
    pub fn pem_path(&self) -> &Path {
        self.pem_file.path()
    }

    /// Issues a leaf certificate valid for `names` (DNS names; `*.x` wildcards allowed).
    pub fn issue(&self, names: &[&str]) -> Result<Leaf> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let first = names
            .first()
            .cloned()
            .unwrap_or_else(|| "tollgate-test".into());
        let mut params = CertificateParams::new(names).context("leaf names")?;
        params.distinguished_name.push(DnType::CommonName, first);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            chain: vec![cert.der().clone(), self.issuer.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// A server config presenting a certificate for `names`, offering h2 and http/1.1.
    pub fn server_config(&self, names: &[&str]) -> Result<Arc<ServerConfig>> {
        let leaf = self.issue(names)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)?;
        config.alpn_protocols = ALPN_H2_HTTP11.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A client config trusting only this CA, offering the given ALPN protocols.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
        Ok(Arc::new(self.client_config_raw(alpn)?))
    }

    /// Like [`Ca::client_config`] but not yet shared, so a test can tweak it (e.g. `enable_sni`).
    pub fn client_config_raw(&self, alpn: &[&[u8]]) -> Result<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone())?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}
