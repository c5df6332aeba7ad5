//! Tests for the ClientHello reader: real clients' hellos (fixtures/, made by fixtures/capture.sh,
//! plus one rustls hello made here), re-split and re-framed every way, and synthetic edge cases.

#![allow(clippy::unwrap_used)] // a test that unwraps bad data fails, which is the point

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::*;

const CHROMIUM_PQ: &[u8] = include_bytes!("fixtures/chromium_pq.bin");
const CURL: &[u8] = include_bytes!("fixtures/curl.bin");
const OPENSSL: &[u8] = include_bytes!("fixtures/openssl.bin");
const OPENSSL_TLS12: &[u8] = include_bytes!("fixtures/openssl_tls12.bin");
const OPENSSL_NO_SNI: &[u8] = include_bytes!("fixtures/openssl_no_sni.bin");
const OPENSSL_UPPER_DOT: &[u8] = include_bytes!("fixtures/openssl_upper_dot.bin");
const OPENSSL_IP_SNI: &[u8] = include_bytes!("fixtures/openssl_ip_sni.bin");
const OPENSSL_IPV6_SNI: &[u8] = include_bytes!("fixtures/openssl_ipv6_sni.bin");

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// What a fixture should give: the SNI and ALPN, or an error's reason label.
type Expected = Result<(&'static str, &'static [&'static [u8]]), &'static str>;

/// Every real client's hello, with what it should give.
fn fixtures() -> Vec<(&'static str, Vec<u8>, Expected)> {
    vec![
        (
            "chromium_pq",
            CHROMIUM_PQ.to_vec(),
            Ok(("pq.example.test", H2_H1)),
        ),
        ("curl", CURL.to_vec(), Ok(("example.test", H2_H1))),
        ("openssl", OPENSSL.to_vec(), Ok(("example.test", H2_H1))),
        (
            "openssl_tls12",
            OPENSSL_TLS12.to_vec(),
            Ok(("example.test", &[])),
        ),
        ("openssl_no_sni", OPENSSL_NO_SNI.to_vec(), Err("no-sni")),
        (
            "openssl_upper_dot",
            OPENSSL_UPPER_DOT.to_vec(),
            Ok(("example.com", &[])),
        ),
        (
            "openssl_ip_sni",
            OPENSSL_IP_SNI.to_vec(),
            Err("ip-literal-sni"),
        ),
        (
            "openssl_ipv6_sni",
            OPENSSL_IPV6_SNI.to_vec(),
            Err("ip-literal-sni"),
        ),
        ("rustls", rustls_hello(), Ok(("rustls.example.test", H2_H1))),
    ]
}

/// The first flight of a real rustls client (ring provider), written to a Vec: no network.
fn rustls_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = H2_H1.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("Rustls.Example.TEST").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// A verdict as a comparable value: the hello, or the error's full message.
fn verdict(result: Result<ClientHello, HelloError>) -> Result<ClientHello, String> {
    result.map_err(|e| e.to_string())
}

/// Pushes `chunks` in order; the first verdict, or `need more` if there is none.
fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<ClientHello, String> {
    let mut reassembler = Reassembler::new();
    for chunk in chunks {
        match reassembler.push(chunk) {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::Done(hello)) => return Ok(hello),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("need more".into())
}

fn feed_all(bytes: &[u8]) -> Result<ClientHello, HelloError> {
    match Reassembler::new().push(bytes)? {
        Progress::Done(hello) => Ok(hello),
        Progress::NeedMore => Err(HelloError::Truncated),
    }
}

fn assert_expected(name: &str, got: Result<ClientHello, HelloError>, expected: &Expected) {
    match (got, expected) {
        (Ok(hello), Ok((sni, alpn))) => {
            assert_eq!(hello.sni, *sni, "{name}");
            assert_eq!(
                hello.alpn,
                alpn.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
                "{name}"
            );
        }
        (Err(e), Err(reason)) => assert_eq!(e.reason(), *reason, "{name}: {e}"),
        (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
    }
}

/// The handshake bytes carried by `raw`'s records (all assumed to be handshake records).
fn handshake_payload(raw: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        payload.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    payload
}

/// Wraps handshake bytes in handshake records of at most `fragment` bytes each.
fn frame(payload: &[u8], fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in payload.chunks(fragment) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn u16_prefixed(data: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// An extension: its type and its encoded data.
type Extension = (u16, Vec<u8>);

/// A server_name extension holding `names` as host_name entries.
fn sni_ext(names: &[&[u8]]) -> Extension {
    let mut list = Vec::new();
    for name in names {
        list.push(0);
        list.extend(u16_prefixed(name));
    }
    (0, u16_prefixed(&list))
}

/// A ClientHello handshake message (header included) with the given extensions, in order.
fn synthetic(extensions: &[Extension]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // session id
    body.extend(u16_prefixed(&[0x13, 0x01])); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    let mut block = Vec::new();
    for (kind, data) in extensions {
        block.extend_from_slice(&kind.to_be_bytes());
        block.extend(u16_prefixed(data));
    }
    body.extend(u16_prefixed(&block));
    let mut message = vec![1];
    message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    message.extend(body);
    message
}

/// A single-record hello with the given extensions.
fn synthetic_record(extensions: &[Extension]) -> Vec<u8> {
    frame(&synthetic(extensions), MAX_RECORD_LEN)
}

fn reason(bytes: &[u8]) -> &'static str {
    match feed_all(bytes) {
        Ok(hello) => panic!("expected an error, got {hello:?}"),
        Err(e) => e.reason(),
    }
}

#[test]
fn fixtures_parse_as_expected() {
    for (name, bytes, expected) in fixtures() {
        assert_expected(name, feed_all(&bytes), &expected);
    }
}

#[test]
fn fixture_details() {
    let curl = feed_all(CURL).unwrap();
    assert_eq!(curl.legacy_version, 0x0303);
    assert_eq!(curl.supported_versions, [0x0304, 0x0303, 0x0302, 0x0301]);
    assert_eq!(curl.key_share_groups, [0x001d]);

    let tls12 = feed_all(OPENSSL_TLS12).unwrap();
    assert!(tls12.supported_versions.is_empty());
    assert!(tls12.key_share_groups.is_empty());
}

#[test]
fn encrypted_hello_extensions_are_seen() {
    // Chromium sends ECH GREASE (0xfe0d) by default; the other clients send no ECH.
    assert_eq!(
        feed_all(CHROMIUM_PQ).unwrap().encrypted,
        Some(Encrypted::Ech)
    );
    for (name, bytes, expected) in fixtures() {
        if name != "chromium_pq" && expected.is_ok() {
            assert_eq!(feed_all(&bytes).unwrap().encrypted, None, "{name}");
        }
    }
    let sni = sni_ext(&[b"a.test"]);
    let ech_outer = vec![0, 0, 1, 0, 1, 7, 0, 1, 9, 0, 1, 9];
    type Case = (&'static str, Vec<Extension>, Option<Encrypted>);
    let cases: Vec<Case> = vec![
        ("none", vec![sni.clone()], None),
        (
            "ech",
            vec![sni.clone(), (EXT_ECH, ech_outer.clone())],
            Some(Encrypted::Ech),
        ),
        // The content is not judged: GREASE, real ECH and junk are all "ech".
        (
            "ech, empty",
            vec![(EXT_ECH, vec![]), sni.clone()],
            Some(Encrypted::Ech),
        ),
        (
            "esni",
            vec![sni.clone(), (0xffce, vec![0; 8])],
            Some(Encrypted::Esni),
        ),
        (
            "both, ech first",
            vec![(EXT_ECH, vec![]), sni.clone(), (0xffce, vec![])],
            Some(Encrypted::Ech),
        ),
        // ech_outer_extensions (0xfd00) only ever appears inside the encrypted inner hello.
        (
            "outer extensions marker",
            vec![sni.clone(), (0xfd00, vec![2, 0, 10])],
            None,
        ),
    ];
    for (name, extensions, want) in cases {
        let hello = feed_all(&synthetic_record(&extensions)).unwrap();
        assert_eq!(hello.encrypted, want, "{name}");
    }
    // Twice is refused like any repeated extension.
    let twice = synthetic_record(&[sni, (EXT_ECH, vec![]), (EXT_ECH, vec![])]);
    assert_eq!(reason(&twice), "malformed");
}

#[test]
fn post_quantum_hello_routes() {
    assert!(
        CHROMIUM_PQ.len() > 1500,
        "X25519MLKEM768 makes the hello large"
    );
    let hello = feed_all(CHROMIUM_PQ).unwrap();
    assert_eq!(hello.sni, "pq.example.test");
    assert!(
        hello.key_share_groups.contains(&0x11ec),
        "{:x?}",
        hello.key_share_groups
    );
    assert!(hello.supported_versions.contains(&0x0304));
}

#[test]
fn fixtures_split_at_every_offset() {
    for (name, bytes, expected) in fixtures() {
        let whole = verdict(feed_all(&bytes));
        assert_expected(name, feed_all(&bytes), &expected);
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(feed([a, b]), whole, "{name} split at {at}");
        }
    }
}

#[test]
fn fixtures_as_one_byte_records_fed_one_byte_at_a_time() {
    for (name, bytes, expected) in fixtures() {
        let reframed = frame(&handshake_payload(&bytes), 1);
        assert!(reframed.len() > bytes.len() * 5, "{name}");
        let mut reassembler = Reassembler::new();
        let mut got = None;
        for (at, byte) in reframed.iter().enumerate() {
            match reassembler.push(std::slice::from_ref(byte)) {
                Ok(Progress::NeedMore) => continue,
                Ok(Progress::Done(hello)) => got = Some(Ok(hello)),
                Err(e) => got = Some(Err(e)),
            }
            assert_eq!(
                at + 1,
                reframed.len(),
                "{name}: verdict before the last byte"
            );
        }
        assert_expected(name, got.unwrap(), &expected);
        assert_eq!(reassembler.raw(), reframed, "{name}: raw keeps every byte");
    }
}

#[test]
fn hello_exactly_at_the_limit_is_read_and_one_byte_more_is_too_large() {
    let sni = sni_ext(&[b"big.example.test"]);
    let unpadded = synthetic(std::slice::from_ref(&sni)).len();
    // One record of MAX_HELLO_BYTES in all: 5 header bytes, then the message.
    let padding = MAX_HELLO_BYTES - RECORD_HEADER_LEN - unpadded - 4;
    let at_limit = synthetic_record(&[sni.clone(), (21, vec![0; padding])]);
    assert_eq!(at_limit.len(), MAX_HELLO_BYTES);
    assert_eq!(feed_all(&at_limit).unwrap().sni, "big.example.test");

    let message = synthetic(&[sni, (21, vec![0; padding + 1])]);
    for fragment in [MAX_RECORD_LEN, 8192, 1000] {
        let over = frame(&message, fragment);
        assert!(over.len() > MAX_HELLO_BYTES);
        assert_eq!(reason(&over), "too-large", "fragment {fragment}");
        // Decided from the record and handshake headers, before the body is buffered.
        assert_eq!(reason(&over[..9]), "too-large", "fragment {fragment}");
    }
}

#[test]
fn declared_lengths_that_cannot_fit_are_refused_at_the_header() {
    // A record that would end past the limit.
    assert_eq!(reason(&[22, 3, 1, 0x40, 0x00]), "too-large");
    // A small record announcing a 1 MiB handshake message.
    assert_eq!(reason(&[22, 3, 1, 0, 100, 1, 0x10, 0, 0]), "too-large");
}

#[test]
fn garbage_is_not_tls() {
    assert_eq!(
        reason(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"),
        "not-tls"
    );
    assert_eq!(reason(b"G"), "not-tls", "decided on the first byte");
    assert_eq!(reason(b"SSH-2.0-OpenSSH_9.2\r\n"), "not-tls");
    // SSLv2-compatible ClientHello: 2-byte header with the top bit set, msg type 1.
    let sslv2 = [
        0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    assert_eq!(reason(&sslv2), "not-tls");
    // A handshake content type with a record version major other than 3.
    assert_eq!(reason(&[22, 2, 0, 0, 1, 1]), "not-tls");
}

#[test]
fn random_bytes_never_panic_or_pass() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2000 {
        let len = round % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_be_bytes()[0]
            })
            .collect();
        let whole = feed([bytes.as_slice()]);
        assert!(whole.is_err(), "{bytes:x?}");
        if bytes.first().is_some_and(|b| !(20..=24).contains(b)) {
            assert_eq!(reason(&bytes), "not-tls");
        }
        assert_eq!(feed(bytes.chunks(1)), whole, "{bytes:x?}");
    }
}

#[tokio::test]
async fn truncated_at_every_offset_then_eof() {
    let one_byte_records = frame(&handshake_payload(CURL), 1);
    let mut inputs: Vec<(&str, Vec<u8>)> = fixtures().into_iter().map(|(n, b, _)| (n, b)).collect();
    inputs.push(("curl as 1-byte records", one_byte_records));
    for (name, bytes) in inputs {
        for at in 0..bytes.len() {
            let mut stream = &bytes[..at];
            let err = read(&mut stream, Duration::from_secs(5)).await.unwrap_err();
            assert!(
                matches!(err, HelloError::Truncated),
                "{name} at {at}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn read_returns_every_byte_read() {
    // A hello followed by a record the client pipelined (0-RTT data): kept for the replay.
    let mut bytes = CURL.to_vec();
    bytes.extend_from_slice(&[23, 3, 3, 0, 3, 1, 2, 3]);
    let (hello, raw) = read(&mut bytes.as_slice(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(hello.sni, "example.test");
    assert_eq!(raw, bytes);
}

#[tokio::test(start_paused = true)]
async fn slow_drip_cannot_extend_the_deadline() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let drip = tokio::spawn(async move {
        for byte in CURL {
            if client.write_all(std::slice::from_ref(byte)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = tokio::time::Instant::now();
    let err = read(&mut server, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, HelloError::Timeout), "{err}");
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    drip.abort();
}

#[tokio::test(start_paused = true)]
async fn hello_split_across_writes_within_the_deadline() {
    let (mut client, mut server) = tokio::io::duplex(4096);
    let writer = tokio::spawn(async move {
        let (a, b) = CHROMIUM_PQ.split_at(1400); // as two TCP segments
        client.write_all(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b).await.unwrap();
        client
    });
    let (hello, raw) = read(&mut server, Duration::from_millis(300)).await.unwrap();
    assert_eq!(hello.sni, "pq.example.test");
    assert_eq!(raw, CHROMIUM_PQ);
    writer.await.unwrap();
}

#[test]
fn other_records_first_are_not_client_hello() {
    assert_eq!(reason(&[21, 3, 3, 0, 2, 2, 40]), "not-client-hello"); // alert
    assert_eq!(reason(&[23, 3, 3, 0, 1, 0]), "not-client-hello"); // application data
    assert_eq!(reason(&[20, 3, 3, 0, 1, 1]), "not-client-hello"); // change_cipher_spec
    // A handshake record carrying a ServerHello (type 2).
    assert_eq!(reason(&[22, 3, 3, 0, 4, 2, 0, 0, 0]), "not-client-hello");
    assert_eq!(
        reason(&[22, 3, 3, 0, 1, 2]),
        "not-client-hello",
        "decided on the type byte"
    );
}

#[test]
fn records_between_fragments_are_malformed() {
    let two_records = frame(&handshake_payload(OPENSSL), 100);
    let mut bytes = two_records[..105].to_vec();
    bytes.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
    assert_eq!(reason(&bytes), "malformed");
}

#[test]
fn record_layer_rules() {
    assert_eq!(reason(&[22, 3, 1, 0, 0]), "malformed", "empty record");
    assert_eq!(
        reason(&[22, 3, 1, 0x40, 0x01]),
        "malformed",
        "record over 2^14"
    );
    // The hello must end at a record boundary.
    let mut message = synthetic(&[sni_ext(&[b"example.test"])]);
    message.push(0);
    assert_eq!(reason(&frame(&message, MAX_RECORD_LEN)), "malformed");
    let mut message = synthetic(&[sni_ext(&[b"example.test"])]);
    let len = message.len();
    message.extend_from_slice(&[20, 0, 0, 0]); // a second handshake message in the last record
    let mut bytes = frame(&message[..len - 10], MAX_RECORD_LEN);
    bytes.extend(frame(&message[len - 10..], MAX_RECORD_LEN));
    assert_eq!(reason(&bytes), "malformed");
}

#[test]
fn extension_rules() {
    let cases: &[(&str, Vec<Extension>, &str)] = &[
        ("no extensions", vec![], "no-sni"),
        (
            "two host names",
            vec![sni_ext(&[b"a.test", b"b.test"])],
            "invalid-sni",
        ),
        ("empty host name", vec![sni_ext(&[b""])], "invalid-sni"),
        (
            "NUL in host name",
            vec![sni_ext(&[b"a\0.test"])],
            "invalid-sni",
        ),
        (
            "space in host name",
            vec![sni_ext(&[b"a b.test"])],
            "invalid-sni",
        ),
        (
            "non-ascii host name",
            vec![sni_ext(&["bücher.de".as_bytes()])],
            "invalid-sni",
        ),
        (
            "ip literal with dot",
            vec![sni_ext(&[b"10.0.0.1."])],
            "ip-literal-sni",
        ),
        (
            "repeated sni",
            vec![sni_ext(&[b"a.test"]), sni_ext(&[b"b.test"])],
            "malformed",
        ),
        (
            "repeated unknown",
            vec![sni_ext(&[b"a.test"]), (99, vec![]), (99, vec![])],
            "malformed",
        ),
        ("empty sni extension", vec![(0, vec![])], "malformed"),
        (
            "sni list too short",
            vec![(0, vec![0, 3, 0, 0, 1, b'a', b'b'])],
            "malformed",
        ),
        (
            "sni trailing byte",
            vec![(0, [sni_ext(&[b"a.test"]).1, vec![0]].concat())],
            "malformed",
        ),
        (
            "alpn empty name",
            vec![sni_ext(&[b"a.test"]), (16, vec![0, 1, 0])],
            "malformed",
        ),
        (
            "alpn empty list",
            vec![sni_ext(&[b"a.test"]), (16, vec![0, 0])],
            "malformed",
        ),
        (
            "versions odd",
            vec![sni_ext(&[b"a.test"]), (43, vec![3, 3, 4, 3])],
            "malformed",
        ),
        (
            "versions server form",
            vec![sni_ext(&[b"a.test"]), (43, vec![3, 4])],
            "malformed",
        ),
        (
            "key share empty key",
            vec![sni_ext(&[b"a.test"]), (51, vec![0, 4, 0, 29, 0, 0])],
            "malformed",
        ),
        (
            "key share short",
            vec![sni_ext(&[b"a.test"]), (51, vec![0, 5, 0, 29, 0, 2, 1])],
            "malformed",
        ),
    ];
    for (name, extensions, expected) in cases {
        assert_eq!(reason(&synthetic_record(extensions)), *expected, "{name}");
    }
    // Extension framing: a length running past the block.
    let mut message = synthetic(&[sni_ext(&[b"a.test"]), (99, vec![1, 2])]);
    let at = message.len() - 3;
    message[at] = 9;
    assert_eq!(reason(&frame(&message, MAX_RECORD_LEN)), "malformed");

    let ok = feed_all(&synthetic_record(&[
        (0x0a0a, vec![]), // GREASE
        sni_ext(&[b"A.test."]),
        (16, vec![0, 3, 2, b'h', b'2']),
        (43, vec![4, 0x3a, 0x3a, 3, 4]),
        (51, vec![0, 5, 0, 29, 0, 1, 9]),
        (0x1a1a, vec![0]), // GREASE again, another value
    ]))
    .unwrap();
    assert_eq!(ok.sni, "a.test");
    assert_eq!(ok.alpn, [b"h2".to_vec()]);
    assert_eq!(ok.supported_versions, [0x3a3a, 0x0304]);
    assert_eq!(ok.key_share_groups, [29]);
}

#[test]
fn host_names_are_normalised_with_the_policy_rules() {
    // The rules are `tollgate_policy::normalize_host`'s; this pins how SNI maps onto them.
    for (name, want) in [
        (&b"Example.COM."[..], Ok("example.com")),
        (b"a_b.example", Ok("a_b.example")),
        (b"xn--bcher-kva.de", Ok("xn--bcher-kva.de")),
        (b".", Err("invalid-sni")),
        (b"a..b", Err("invalid-sni")),
        (b"a b", Err("invalid-sni")),
        (b"a\0b", Err("invalid-sni")),
        (b"-a.test", Err("invalid-sni")),
        ("b\u{fc}cher.de".as_bytes(), Err("invalid-sni")),
        (&[0xff, b'a'], Err("invalid-sni")),
        (b"127.0.0.1.", Err("ip-literal-sni")),
        (b"[::1]", Err("ip-literal-sni")),
        (b"2001:db8::1", Err("ip-literal-sni")),
        (b"2130706433", Err("ip-literal-sni")),
        (b"0x7f.1", Err("ip-literal-sni")),
    ] {
        let got = normalize_sni(name).map_err(|e| e.reason());
        assert_eq!(got.as_deref().map_err(|e| *e), want, "{name:?}");
    }
    let label = "a".repeat(63);
    let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
    assert_eq!(normalize_sni(longest.as_bytes()).unwrap(), longest);
    let too_long = format!("{longest}c");
    assert!(matches!(
        normalize_sni(too_long.as_bytes()),
        Err(HelloError::InvalidSni)
    ));
}

#[test]
fn verdicts_do_not_depend_on_how_bytes_arrive() {
    // Every single-byte corruption of two real hellos: whole, split in the middle, byte by byte.
    for original in [OPENSSL, CURL] {
        for at in 0..original.len() {
            let mut bytes = original.to_vec();
            bytes[at] ^= 0xff;
            let whole = feed([bytes.as_slice()]);
            let (a, b) = bytes.split_at(bytes.len() / 2);
            assert_eq!(feed([a, b]), whole, "corrupted at {at}");
            assert_eq!(feed(bytes.chunks(1)), whole, "corrupted at {at}");
        }
    }
}

#[test]
fn a_verdict_is_final() {
    let mut reassembler = Reassembler::new();
    assert!(matches!(reassembler.push(CURL), Ok(Progress::Done(_))));
    assert!(matches!(reassembler.push(b"more"), Ok(Progress::Done(_))));
    assert_eq!(reassembler.raw().len(), CURL.len() + 4);

    let mut reassembler = Reassembler::new();
    assert!(matches!(reassembler.push(b"GET"), Err(HelloError::NotTls)));
    assert!(matches!(reassembler.push(CURL), Err(HelloError::NotTls)));
    assert_eq!(reassembler.into_raw().len(), 3 + CURL.len());
}

#[test]
fn reasons_are_bounded_labels() {
    let all = [
        HelloError::NotTls,
        HelloError::NotClientHello,
        HelloError::Malformed("x"),
        HelloError::TooLarge,
        HelloError::Timeout,
        HelloError::Truncated,
        HelloError::NoSni,
        HelloError::InvalidSni,
        HelloError::IpLiteralSni,
        HelloError::Io(std::io::ErrorKind::ConnectionReset.into()),
    ];
    let reasons: Vec<_> = all.iter().map(HelloError::reason).collect();
    // Exactly the catalog's list, in order: metrics pre-create one series per reason.
    assert_eq!(reasons, crate::metrics::HELLO_FAILURES);
    for e in &all {
        assert_eq!(e.duplicate().reason(), e.reason());
    }
}
