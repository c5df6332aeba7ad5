//! The per-Pod certificate authority that intercepted connections are terminated with.
//!
//! Generated at start by default, its private key only ever in memory (a Pod restart mints a new
//! one, and the agent container trusts whatever is in the shared output directory). Leaf
//! certificates are minted per intercepted host, valid for that name only, and cached.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How many leaf certificates are kept (one per intercepted host name; policies name few).
pub const LEAF_CACHE: usize = 256;
/// Leaves are re-minted after this long, well inside their validity.
const LEAF_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Leaf validity: a Pod outliving it gets fresh leaves through the refresh above.
const LEAF_VALIDITY: time::Duration = time::Duration::days(7);
/// CA validity when generated.
const CA_VALIDITY: time::Duration = time::Duration::days(365);
/// Tolerance for clocks that run slightly behind ours.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// Why the authority could not be built or could not mint a leaf.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Key generation or certificate signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CA certificate or key file could not be read or parsed.
    #[error("cannot load the CA from {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the minted key.
    #[error("the TLS stack refused the key: {0}")]
    Key(#[from] rustls::Error),
}

/// The per-Pod CA: signs leaves on demand and serves them to rustls by SNI.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<LeafCache>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// Generates a fresh CA (ECDSA P-256) whose key never leaves this process.
    pub fn generate(provider: Arc<CryptoProvider>) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "tollgate per-Pod CA");
        name.push(DnType::OrganizationName, "tollgate");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Self::assemble(
            Issuer::new(params, key),
            cert.der().clone(),
            cert_pem,
            provider,
        ))
    }

    /// Loads an operator-provided CA (PEM certificate and PKCS#8/SEC1/PKCS#1 key files).
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CaError> {
        let load_err = |path: &Path, reason: String| CaError::Load {
            path: path.display().to_string(),
            reason,
        };
        let cert_pem =
            std::fs::read_to_string(cert_path).map_err(|e| load_err(cert_path, e.to_string()))?;
        let key_pem =
            std::fs::read_to_string(key_path).map_err(|e| load_err(key_path, e.to_string()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| load_err(key_path, e.to_string()))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| load_err(cert_path, e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| load_err(cert_path, e.to_string()))?;
        Ok(Self::assemble(issuer, cert_der, cert_pem, provider))
    }

    fn assemble(
        issuer: Issuer<'static, KeyPair>,
        cert_der: CertificateDer<'static>,
        cert_pem: String,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            issuer,
            cert_der,
            cert_pem,
            provider,
            leaves: Mutex::new(LeafCache::default()),
        }
    }

    /// The CA certificate, PEM.
    #[cfg(test)]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    #[cfg(test)]
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A leaf for `host` (already normalised), from the cache or freshly minted.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        if let Some(hit) = self.cache().get(host) {
            return Ok(hit);
        }
        // Minted outside the lock: signing takes ~100 µs and must not serialise handshakes.
        let minted = Arc::new(self.mint(host)?);
        self.cache().insert(host.to_owned(), minted.clone());
        Ok(minted)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        // A panic while holding this lock cannot leave the cache inconsistent: recover it.
        self.leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signer = self.provider.key_provider.load_private_key(key_der)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signer,
        ))
    }

    /// Writes `ca.crt`, `ridges-ca.crt` (the Python sidecar's name) and `ca-bundle.crt` (the
    /// system roots plus this CA, for the agent's SSL_CERT_FILE) into `dir`, each atomically.
    pub fn write_outputs(&self, dir: &Path, system_roots: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut bundle = std::fs::read(system_roots).unwrap_or_else(|error| {
            tracing::warn!(path = %system_roots.display(), %error, "no system roots; the bundle holds the tollgate CA only");
            Vec::new()
        });
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(self.cert_pem.as_bytes());
        write_atomically(&dir.join("ca.crt"), self.cert_pem.as_bytes())?;
        write_atomically(&dir.join("ridges-ca.crt"), self.cert_pem.as_bytes())?;
        write_atomically(&dir.join("ca-bundle.crt"), &bundle)
    }
}

/// Writes a sibling temp file, syncs it and renames it over `path`: readers see the old file or
/// the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// rustls's view of the authority: a leaf for whatever name the (already vetted) hello carries.
#[derive(Debug)]
pub struct LeafResolver(pub Arc<Authority>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = tollgate_policy::normalize_host(hello.server_name()?).ok()?;
        match self.0.leaf(&host) {
            Ok(leaf) => Some(leaf),
            Err(error) => {
                tracing::error!(%host, %error, "cannot mint a leaf certificate");
                None
            }
        }
    }
}

/// A bounded map of host → leaf, evicting the oldest entry when full.
#[derive(Default)]
struct LeafCache {
    map: HashMap<String, (Arc<CertifiedKey>, Instant)>,
    order: VecDeque<String>,
}

impl LeafCache {
    fn get(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let (leaf, minted) = self.map.get(host)?;
        (minted.elapsed() < LEAF_REFRESH).then(|| leaf.clone())
    }

    fn insert(&mut self, host: String, leaf: Arc<CertifiedKey>) {
        if self
            .map
            .insert(host.clone(), (leaf, Instant::now()))
            .is_none()
        {
            self.order.push_back(host);
        }
        while self.map.len() > LEAF_CACHE {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn leaves_chain_to_the_ca_and_name_only_their_host() {
        use rustls::client::danger::ServerCertVerifier;
        let ca = Authority::generate(provider()).unwrap();
        let leaf = ca.leaf("openrouter.ai").unwrap();
        assert_eq!(leaf.cert.len(), 2);
        assert_eq!(&leaf.cert[1], ca.cert_der());
        // Verify with webpki through rustls: trusted for its name, not for another.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let name = rustls::pki_types::ServerName::try_from("openrouter.ai").unwrap();
        verifier
            .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &name, &[], now)
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &other, &[], now)
                .is_err()
        );
    }

    #[test]
    fn leaves_are_cached_and_the_cache_is_bounded() {
        let ca = Authority::generate(provider()).unwrap();
        let a = ca.leaf("a.test").unwrap();
        assert!(Arc::ptr_eq(&a, &ca.leaf("a.test").unwrap()));
        for i in 0..LEAF_CACHE + 10 {
            ca.leaf(&format!("h{i}.test")).unwrap();
        }
        assert!(ca.cache().map.len() <= LEAF_CACHE);
        assert!(
            !Arc::ptr_eq(&a, &ca.leaf("a.test").unwrap()),
            "oldest entry was evicted"
        );
    }

    #[test]
    fn a_loaded_ca_signs_like_a_generated_one() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "operator CA");
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("ca.key"), key.serialize_pem()).unwrap();
        let ca = Authority::load(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca.key"),
            provider(),
        )
        .unwrap();
        assert_eq!(ca.cert_der(), cert.der());
        assert_eq!(&ca.leaf("x.test").unwrap().cert[1], cert.der());
        let missing = Authority::load(
            &dir.path().join("nope.pem"),
            &dir.path().join("ca.key"),
            provider(),
        );
        assert!(matches!(missing, Err(CaError::Load { .. })));
    }

    #[test]
    fn outputs_hold_the_ca_and_the_bundle_appends_it_to_the_system_roots() {
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("roots.pem");
        std::fs::write(
            &roots,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        )
        .unwrap();
        let ca = Authority::generate(provider()).unwrap();
        let out = dir.path().join("out");
        ca.write_outputs(&out, &roots).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("ca.crt")).unwrap(),
            ca.cert_pem()
        );
        assert_eq!(
            std::fs::read_to_string(out.join("ridges-ca.crt")).unwrap(),
            ca.cert_pem()
        );
        let bundle = std::fs::read_to_string(out.join("ca-bundle.crt")).unwrap();
        assert!(bundle.starts_with(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN"
        ));
        assert!(bundle.ends_with(ca.cert_pem()));
    }
}
