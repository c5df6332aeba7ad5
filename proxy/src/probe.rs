//! Readiness that a port squatter cannot forge: `tollgate probe`, for an exec probe.
//!
//! An HTTP probe cannot tell tollgate from an agent that took the admin port while tollgate was
//! down: any path or answer it checks, the agent can copy. So at start tollgate writes a fresh
//! random key to a file in its own container (`--probe-secret-file`, on the sidecar's private
//! `/tmp`), and when `/readyz` is ready and carries a challenge it answers with
//! HMAC-SHA256(key, challenge). `tollgate probe`, run by kubelet inside the sidecar container,
//! reads the key, sends a random challenge and succeeds only on a 200 with a valid proof.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The request header carrying the probe's challenge (hex).
pub const CHALLENGE_HEADER: &str = "x-tollgate-challenge";
/// The response header carrying HMAC-SHA256(key, challenge) (hex).
pub const PROOF_HEADER: &str = "x-tollgate-proof";
/// How long the probe waits for the admin port in all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The key that proves an answer came from this tollgate process.
pub struct ProbeKey(hmac::Key);

/// Why `tollgate probe` failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The key file could not be read (tollgate has not started, or another path).
    #[error("cannot read the probe key {path}: {source}")]
    Key {
        /// The file.
        path: String,
        /// Why not.
        source: std::io::Error,
    },
    /// The admin port could not be reached or read.
    #[error("admin port {addr}: {source}")]
    Io {
        /// The admin address.
        addr: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// Not ready (the status line, as received).
    #[error("not ready: {0}")]
    NotReady(String),
    /// A 200 without a valid proof: something other than this tollgate answered.
    #[error("the answer on the admin port carries no valid proof: not tollgate (port squatted?)")]
    Forged,
}

impl ProbeKey {
    /// A fresh random key, written (hex, mode 0600, atomically) to `path`.
    pub fn generate(path: &Path) -> std::io::Result<ProbeKey> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let text = hex(&bytes);
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".tollgate-probe-key.{}", std::process::id()));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(ProbeKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The key tollgate wrote to `path`.
    pub fn load(path: &Path) -> std::io::Result<ProbeKey> {
        let text = std::fs::read_to_string(path)?;
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| std::io::Error::other("not a 32-byte hex key"))?;
        Ok(ProbeKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The proof for `challenge`, or `None` when the challenge is not 16..=64 hex characters.
    pub fn prove(&self, challenge: &str) -> Option<String> {
        let valid = (16..=64).contains(&challenge.len())
            && challenge.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| hex(hmac::sign(&self.0, challenge.as_bytes()).as_ref()))
    }

    fn verify(&self, challenge: &str, proof: &str) -> bool {
        unhex(proof).is_some_and(|tag| hmac::verify(&self.0, challenge.as_bytes(), &tag).is_ok())
    }
}

/// `tollgate probe`: GET `/readyz` on `admin` with a fresh challenge; Ok only for a 200 whose
/// proof verifies with the key in `key_file`.
pub fn run(admin: SocketAddr, key_file: &Path) -> Result<(), ProbeError> {
    let key = ProbeKey::load(key_file).map_err(|source| ProbeError::Key {
        path: key_file.display().to_string(),
        source,
    })?;
    let mut nonce = [0u8; 16];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| ProbeError::Io {
            addr: admin,
            source: std::io::Error::other("no system randomness"),
        })?;
    let challenge = hex(&nonce);
    let io = |source| ProbeError::Io {
        addr: admin,
        source,
    };
    let mut stream = TcpStream::connect_timeout(&admin, PROBE_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: {admin}\r\n{CHALLENGE_HEADER}: {challenge}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(ProbeError::NotReady(status.to_owned()));
    }
    let proof = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(PROOF_HEADER)
            .then(|| value.trim().to_owned())
    });
    match proof {
        Some(proof) if key.verify(&challenge, &proof) => Ok(()),
        _ => Err(ProbeError::Forged),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_with_the_same_key_and_challenge() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("key");
        let key = ProbeKey::generate(&path).unwrap_or_else(|e| panic!("{e}"));
        let loaded = ProbeKey::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let proof = key.prove("00112233445566778899aabbccddeeff");
        let proof = proof.unwrap_or_default();
        assert!(loaded.verify("00112233445566778899aabbccddeeff", &proof));
        assert!(!loaded.verify("00112233445566778899aabbccddeefe", &proof));
        let other = ProbeKey::generate(&dir.path().join("other")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!other.verify("00112233445566778899aabbccddeeff", &proof));
        assert!(key.prove("short").is_none());
        assert!(key.prove(&"z".repeat(32)).is_none());
        assert_eq!(unhex("0aff"), Some(vec![10, 255]));
        assert_eq!(unhex("0af"), None);
    }
}
