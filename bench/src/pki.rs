//! A throwaway CA and the origin's certificate for `bench.test`, and the rustls configs of both
//! ends, on the ring provider (this workspace builds without aws-lc-rs).

use std::sync::Arc;

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The SNI every client sends; the tollgate policy and the HAProxy config route it to the origin.
pub const SNI: &str = "bench.test";

/// Both ends' TLS configuration.
#[derive(Clone)]
pub struct Pki {
    /// The origin's config: a leaf for [`SNI`] plus the CA, HTTP/1.1 ALPN, no session tickets.
    pub server: Arc<ServerConfig>,
    /// The load generator's config: trusts only the CA; never resumes, so every connection is a
    /// full handshake (X25519 + ECDSA P-256, TLS 1.3).
    pub client: Arc<ClientConfig>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    /// Generates a fresh CA and leaf, and builds the two configs.
    pub fn generate() -> Result<Pki> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "tollgate-bench CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let mut leaf = CertificateParams::new(vec![SNI.to_owned()])?;
        leaf.distinguished_name.push(DnType::CommonName, SNI);
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &issuer)?;
        let chain = vec![cert.der().clone(), issuer.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The client never resumes: tickets would be work and bytes that no real client of this
        // benchmark uses.
        server.send_tls13_tickets = 0;

        let mut roots = RootCertStore::empty();
        roots.add(issuer.der().clone())?;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        client.resumption = Resumption::disabled();

        Ok(Pki {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// [`SNI`] as a rustls server name.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SNI).expect("bench.test is a valid DNS name")
}
