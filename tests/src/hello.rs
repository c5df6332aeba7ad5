//! ClientHello bytes for tests that poke the proxy's parser without a full TLS client:
//! a genuine one produced by rustls, and hand-made ones whose SNI, size and record framing a
//! real client would never produce (IP literal or mixed-case SNI, 16 KiB+ padding, fragments),
//! and any of them with one more extension appended (ECH, ESNI).

use std::sync::Arc;

use anyhow::Result;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

/// The first flight rustls sends for `sni` (one TLS record holding the ClientHello).
pub fn rustls_client_hello(config: Arc<ClientConfig>, sni: &str) -> Result<Vec<u8>> {
    let name = ServerName::try_from(sni.to_string())?;
    let mut conn = rustls::ClientConnection::new(config, name)?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// Largest TLS record payload (2^14), also the proxy's ClientHello size limit in the contract.
pub const MAX_FRAGMENT: usize = 16 * 1024;

/// A hand-made TLS 1.3-style ClientHello handshake message (type + u24 length + body).
///
/// `sni`: the raw bytes of the single `host_name` entry, or `None` for no SNI extension.
/// `min_body_len`: pads (extension 21) so the body is exactly this long when it is larger
/// than the unpadded body.
pub fn client_hello_message(sni: Option<&[u8]>, min_body_len: usize) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let mut list = vec![0u8]; // host_name
        put_u16(&mut list, name.len());
        list.extend_from_slice(name);
        let mut data = Vec::new();
        put_u16(&mut data, list.len());
        data.extend_from_slice(&list);
        put_ext(&mut ext, 0, &data);
    }
    put_ext(&mut ext, 10, &[0, 2, 0x00, 0x1d]); // supported_groups: x25519
    put_ext(&mut ext, 13, &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]); // signature_algorithms
    put_ext(&mut ext, 43, &[2, 0x03, 0x04]); // supported_versions: TLS 1.3
    put_ext(&mut ext, 45, &[1, 1]); // psk_key_exchange_modes: psk_dhe_ke
    let mut share = vec![0, 36, 0x00, 0x1d, 0, 32];
    share.extend((1..=32u8).map(|b| b.wrapping_mul(7)));
    put_ext(&mut ext, 51, &share); // key_share: x25519

    let mut body = vec![0x03, 0x03]; // legacy_version TLS 1.2
    body.extend((0..32u8).map(|b| b ^ 0x5a)); // random
    body.push(32); // legacy_session_id
    body.extend(0..32u8);
    put_u16(&mut body, 8); // cipher_suites
    body.extend_from_slice(&[0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2f]);
    body.extend_from_slice(&[1, 0]); // compression: null

    // body so far + 2 (extensions length) + ext; padding adds a 4-byte header + n zeros
    let unpadded = body.len() + 2 + ext.len();
    if min_body_len >= unpadded + 4 {
        put_ext(&mut ext, 21, &vec![0u8; min_body_len - unpadded - 4]);
    }
    put_u16(&mut body, ext.len());
    body.extend_from_slice(&ext);

    let mut msg = vec![1u8]; // client_hello
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    msg
}

/// Frames handshake bytes into TLS records (type 22) of at most `max_fragment` bytes each.
pub fn tls_records(handshake: &[u8], max_fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(max_fragment.max(1)) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        put_u16(&mut out, chunk.len());
        out.extend_from_slice(chunk);
    }
    out
}

/// A complete first flight: a hand-made ClientHello with `sni`, in one record.
pub fn client_hello(sni: Option<&[u8]>) -> Vec<u8> {
    tls_records(&client_hello_message(sni, 0), MAX_FRAGMENT)
}

/// `encrypted_client_hello`, the extension ECH (and Chromium's ECH GREASE) adds to a hello.
pub const EXT_ECH: u16 = 0xfe0d;
/// `encrypted_server_name`, ECH's predecessor in the ESNI drafts.
pub const EXT_ESNI: u16 = 0xffce;

/// The body of an outer `encrypted_client_hello` extension shaped as a real client sends it
/// (RFC 9849 §5: type outer, HKDF-SHA256 + AES-128-GCM, a config id, an X25519 `enc`, and a
/// ciphertext). The bytes are made up: a proxy cannot tell them from a real ciphertext, nor
/// from GREASE, which is the point.
pub fn ech_outer_extension() -> Vec<u8> {
    let mut data = vec![0]; // ECHClientHelloType outer
    data.extend_from_slice(&[0x00, 0x01, 0x00, 0x01]); // kdf_id, aead_id
    data.push(0x42); // config_id
    put_u16(&mut data, 32);
    data.extend((0..32u8).map(|b| b.wrapping_mul(13)));
    put_u16(&mut data, 144);
    data.extend((0..144u8).map(|b| b.wrapping_mul(29) ^ 0xa5));
    data
}

/// Appends extension `kind` with `data` to a first flight holding one ClientHello in one TLS
/// record (what rustls sends), fixing the record, handshake and extensions lengths.
pub fn append_extension(flight: &[u8], kind: u16, data: &[u8]) -> Result<Vec<u8>> {
    const RECORD: usize = 5;
    const HANDSHAKE: usize = 4;
    let record_len = usize::from(u16::from_be_bytes([flight[3], flight[4]]));
    anyhow::ensure!(
        flight.len() == RECORD + record_len && flight.get(RECORD) == Some(&1),
        "expected exactly one record holding a ClientHello"
    );
    // Walk the body to the extensions: version, random, session id, cipher suites, compression.
    let body = RECORD + HANDSHAKE;
    let mut at = body + 2 + 32;
    at += 1 + usize::from(flight[at]);
    at += 2 + usize::from(u16::from_be_bytes([flight[at], flight[at + 1]]));
    at += 1 + usize::from(flight[at]);
    let ext_len = usize::from(u16::from_be_bytes([flight[at], flight[at + 1]]));
    anyhow::ensure!(at + 2 + ext_len == flight.len(), "extensions end the hello");

    let added = 4 + data.len();
    let mut out = flight.to_vec();
    put_ext(&mut out, kind, data);
    let set_u16 = |out: &mut Vec<u8>, at: usize, n: usize| {
        let n = u16::try_from(n).expect("a test hello stays under 64 KiB");
        out[at..at + 2].copy_from_slice(&n.to_be_bytes());
    };
    set_u16(&mut out, at, ext_len + added);
    set_u16(&mut out, 3, record_len + added);
    let hs_len = u32::try_from(record_len + added - HANDSHAKE).expect("fits");
    out[RECORD + 1..RECORD + 4].copy_from_slice(&hs_len.to_be_bytes()[1..]);
    Ok(out)
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(
        &u16::try_from(n)
            .expect("TLS field lengths used in tests fit in u16")
            .to_be_bytes(),
    );
}

fn put_ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    put_u16(out, data.len());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_hello_has_exact_body_length() {
        let msg = client_hello_message(Some(b"allowed.test"), MAX_FRAGMENT + 1);
        let len = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
        assert_eq!(len, MAX_FRAGMENT + 1);
        assert_eq!(msg.len(), MAX_FRAGMENT + 5);
        let records = tls_records(&msg, MAX_FRAGMENT);
        assert_eq!(records.len(), msg.len() + 2 * 5, "two records");
    }

    #[test]
    fn appended_extension_keeps_every_length_consistent() {
        let flight = client_hello(Some(b"a.test"));
        let data = ech_outer_extension();
        let out = append_extension(&flight, EXT_ECH, &data).unwrap();
        assert_eq!(out.len(), flight.len() + 4 + data.len());
        assert_eq!(
            usize::from(u16::from_be_bytes([out[3], out[4]])),
            out.len() - 5
        );
        assert_eq!(
            u32::from_be_bytes([0, out[6], out[7], out[8]]) as usize,
            out.len() - 9
        );
        assert!(out.ends_with(&data));
        // Twice is fine too: each call re-reads the lengths it wrote.
        let twice = append_extension(&out, 0x1234, &[]).unwrap();
        assert_eq!(twice.len(), out.len() + 4);
    }

    #[test]
    fn unpadded_hello_is_one_record() {
        let rec = client_hello(None);
        assert_eq!(rec[0], 0x16);
        assert_eq!(u16::from_be_bytes([rec[3], rec[4]]) as usize, rec.len() - 5);
    }
}
