//! Reads the TLS ClientHello off a fresh client connection, failing closed.
//!
//! Two layers: [`Reassembler`] is pure (bytes in, verdict out) and reassembles the first
//! handshake message across TLS records and across reads; [`read`] drives it from a socket under
//! one deadline for the whole hello. Every byte read is kept so the tunnel can replay the hello
//! verbatim to the upstream.
//!
//! The verdict depends only on the byte stream, never on how it was split into reads: each check
//! runs as soon as the bytes it needs have arrived, in stream order (the fuzz target
//! `client_hello` asserts this). Oversized hellos are refused from their headers, before their
//! bodies are buffered; the parser runs once, when the message is complete, so feeding a hello one
//! byte at a time costs O(n) in total.

use std::time::Duration;

use tls_parser::{
    SNIType, TlsExtension, TlsExtensionType, parse_tls_extension_alpn_content,
    parse_tls_extension_sni_content, parse_tls_handshake_client_hello,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tollgate_policy::{HostError, normalize_host};

#[cfg(test)]
mod tests;

/// Raw bytes (record headers included) buffered before a hello is refused as [`HelloError::TooLarge`].
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// Largest TLSPlaintext fragment (RFC 8446 §5.1); a ClientHello is never encrypted, so no slack.
const MAX_RECORD_LEN: usize = 1 << 14;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Bytes asked of the socket per read; a typical hello (post-quantum ones included) fits in one.
const READ_CHUNK: usize = 4096;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;
/// encrypted_client_hello (RFC 9849 / draft-ietf-tls-esni-13 and later, as browsers ship it).
const EXT_ECH: u16 = 0xfe0d;
/// The earlier encrypted_server_name (ESNI drafts), which tls-parser still knows by name.
const EXT_ESNI: u16 = TlsExtensionType::EncryptedServerName.0;

/// An extension that hides the real server name behind the outer SNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypted {
    /// `encrypted_client_hello` (0xfe0d): real ECH, or the GREASE that Chromium sends by default
    /// (the two are indistinguishable on the wire by design).
    Ech,
    /// `encrypted_server_name` (0xffce), ECH's abandoned predecessor.
    Esni,
}

impl Encrypted {
    /// The extension's name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Encrypted::Ech => "encrypted_client_hello",
            Encrypted::Esni => "encrypted_server_name",
        }
    }
}

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The server_name, normalised: lowercase, no trailing dot, a valid DNS name, never an IP.
    pub sni: String,
    /// ALPN protocol names in the client's order; empty without the extension.
    pub alpn: Vec<Vec<u8>>,
    /// `legacy_version` from the hello body (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The supported_versions extension as sent (GREASE included); empty without it.
    pub supported_versions: Vec<u16>,
    /// Named groups of the key_share entries as sent (GREASE included), e.g. 0x11ec for X25519MLKEM768.
    pub key_share_groups: Vec<u16>,
    /// Set when the hello carries ECH or ESNI: the SNI above is then only the outer name.
    pub encrypted: Option<Encrypted>,
}

/// Why no ClientHello could be read; all but `Io` are the client's doing.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The first bytes are not a TLS record (plain HTTP, SSLv2, random bytes).
    #[error("not tls")]
    NotTls,
    /// TLS, but the first record or message is not a ClientHello.
    #[error("first tls message is not a client hello")]
    NotClientHello,
    /// A ClientHello that breaks the TLS encoding rules; the string names what was wrong.
    #[error("malformed client hello: {0}")]
    Malformed(&'static str),
    /// Larger than [`MAX_HELLO_BYTES`].
    #[error("client hello larger than {MAX_HELLO_BYTES} bytes")]
    TooLarge,
    /// The whole hello did not arrive within the deadline.
    #[error("timed out reading the client hello")]
    Timeout,
    /// The client closed the connection before a full hello.
    #[error("connection closed before a full client hello")]
    Truncated,
    /// No server_name extension.
    #[error("client hello has no sni")]
    NoSni,
    /// A server_name that is not exactly one valid DNS name.
    #[error("invalid sni")]
    InvalidSni,
    /// A server_name that is an IPv4 or IPv6 literal.
    #[error("sni is an ip literal")]
    IpLiteralSni,
    /// Reading from the client failed.
    #[error("reading the client hello: {0}")]
    Io(#[from] std::io::Error),
}

impl HelloError {
    /// A bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HelloError::NotTls => "not-tls",
            HelloError::NotClientHello => "not-client-hello",
            HelloError::Malformed(_) => "malformed",
            HelloError::TooLarge => "too-large",
            HelloError::Timeout => "timeout",
            HelloError::Truncated => "truncated",
            HelloError::NoSni => "no-sni",
            HelloError::InvalidSni => "invalid-sni",
            HelloError::IpLiteralSni => "ip-literal-sni",
            HelloError::Io(_) => "io",
        }
    }

    /// A copy, for repeating a verdict; `io::Error` is not `Clone`, so an `Io` keeps only its kind.
    fn duplicate(&self) -> HelloError {
        match self {
            HelloError::NotTls => HelloError::NotTls,
            HelloError::NotClientHello => HelloError::NotClientHello,
            HelloError::Malformed(what) => HelloError::Malformed(what),
            HelloError::TooLarge => HelloError::TooLarge,
            HelloError::Timeout => HelloError::Timeout,
            HelloError::Truncated => HelloError::Truncated,
            HelloError::NoSni => HelloError::NoSni,
            HelloError::InvalidSni => HelloError::InvalidSni,
            HelloError::IpLiteralSni => HelloError::IpLiteralSni,
            HelloError::Io(e) => HelloError::Io(e.kind().into()),
        }
    }
}

/// The state of a [`Reassembler`] after a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// No verdict yet: push more bytes.
    NeedMore,
    /// A complete, valid ClientHello.
    Done(ClientHello),
}

/// Incremental, pure (no I/O) reassembler: bytes in, verdict out. Keeps every raw byte so the
/// proxy can replay them verbatim.
///
/// The hello must be the first handshake message, carried by handshake records only, and must
/// end exactly at a record boundary (RFC 8446 §5.1: the next flight comes after a key change).
/// Bytes pushed after that boundary (0-RTT early data) are kept in [`raw`](Self::raw) unread.
#[derive(Debug, Default)]
pub struct Reassembler {
    /// Every byte pushed, in order.
    raw: Vec<u8>,
    /// Offset in `raw` of the first byte not yet consumed.
    pos: usize,
    /// Where the current record's payload ends in `raw`; `None` between records.
    record_end: Option<usize>,
    /// The handshake message gathered so far, its 4-byte header included.
    handshake: Vec<u8>,
    /// The message's full length (header included), once its header has arrived.
    handshake_len: Option<usize>,
    /// The first verdict, repeated by later pushes.
    verdict: Option<Result<ClientHello, HelloError>>,
}

impl Reassembler {
    /// An empty reassembler, waiting for the first byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and reports whether the hello is complete; an error is final. After a verdict,
    /// further pushes are still kept in [`raw`](Self::raw) and repeat that verdict.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Progress, HelloError> {
        self.raw.extend_from_slice(bytes);
        if self.verdict.is_none() {
            match self.advance() {
                Ok(Progress::NeedMore) => return Ok(Progress::NeedMore),
                Ok(Progress::Done(hello)) => self.verdict = Some(Ok(hello)),
                Err(e) => self.verdict = Some(Err(e)),
            }
        }
        match &self.verdict {
            Some(Ok(hello)) => Ok(Progress::Done(hello.clone())),
            Some(Err(e)) => Err(e.duplicate()),
            None => Ok(Progress::NeedMore),
        }
    }

    /// Every byte pushed so far, in order.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Every byte pushed, to replay to the upstream.
    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }

    /// Consumes as much of `raw` as possible.
    fn advance(&mut self) -> Result<Progress, HelloError> {
        loop {
            let Some(end) = self.record_end else {
                match self.record_header()? {
                    Some(end) => self.record_end = Some(end),
                    None => return Ok(Progress::NeedMore),
                }
                continue;
            };
            let available = end.min(self.raw.len());
            if let Some(fragment) = self.raw.get(self.pos..available) {
                self.handshake.extend_from_slice(fragment);
            }
            self.pos = available;
            self.handshake_header(end)?;
            if self.pos < end {
                return Ok(Progress::NeedMore);
            }
            self.record_end = None;
            if self.handshake_len == Some(self.handshake.len()) {
                return parse(&self.handshake).map(Progress::Done);
            }
        }
    }

    /// Checks the record header at `pos` byte by byte as it arrives; returns where the record's
    /// payload ends once the header is complete and valid, `None` while it is incomplete.
    fn record_header(&mut self) -> Result<Option<usize>, HelloError> {
        let first = self.pos == 0;
        // Every record carries at least one payload byte (empty ones are refused below).
        if self.pos + RECORD_HEADER_LEN + 1 > MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        let header = self.raw.get(self.pos..).unwrap_or_default();
        let header = header.get(..RECORD_HEADER_LEN).unwrap_or(header);
        if let Some(&content_type) = header.first() {
            // change_cipher_spec, alert, handshake, application_data, heartbeat
            if !(20..=24).contains(&content_type) {
                return Err(unexpected_record(first, HelloError::NotTls));
            }
        }
        if let Some(&major) = header.get(1) {
            if major != 3 {
                return Err(unexpected_record(first, HelloError::NotTls));
            }
            if header.first() != Some(&CONTENT_TYPE_HANDSHAKE) {
                return Err(unexpected_record(first, HelloError::NotClientHello));
            }
        }
        let &[_, _, _, hi, lo] = header else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD_LEN {
            return Err(HelloError::Malformed("record longer than 2^14 bytes"));
        }
        self.pos += RECORD_HEADER_LEN;
        let end = self.pos + len;
        if end > MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        if let Some(total) = self.handshake_len {
            // A continuation record: the message so far plus this record must not overshoot it.
            if self.handshake.len() + len > total {
                return Err(HelloError::Malformed("data after the client hello"));
            }
        }
        Ok(Some(end))
    }

    /// Checks the handshake message header once its bytes have arrived; `record_end` is where the
    /// record being read ends, so that lengths that cannot fit are refused before their bytes come.
    fn handshake_header(&mut self, record_end: usize) -> Result<(), HelloError> {
        if self.handshake_len.is_some() {
            return Ok(());
        }
        if self
            .handshake
            .first()
            .is_some_and(|&kind| kind != HANDSHAKE_CLIENT_HELLO)
        {
            return Err(HelloError::NotClientHello);
        }
        let Some(&[_, a, b, c]) = self.handshake.get(..HANDSHAKE_HEADER_LEN) else {
            return Ok(());
        };
        let total =
            HANDSHAKE_HEADER_LEN + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
        // How much of the message the current record holds once it is complete.
        let by_record_end = self.handshake.len() + (record_end - self.pos);
        if total < by_record_end {
            return Err(HelloError::Malformed("data after the client hello"));
        }
        // The rest needs at least one more record: its header plus the missing bytes.
        if total > by_record_end
            && record_end + RECORD_HEADER_LEN + (total - by_record_end) > MAX_HELLO_BYTES
        {
            return Err(HelloError::TooLarge);
        }
        self.handshake_len = Some(total);
        Ok(())
    }
}

/// The error for a record of the wrong kind: its own kind on the first record, `Malformed` on a
/// later one (RFC 8446 §5.1: no other records between the fragments of a handshake message).
fn unexpected_record(first: bool, error: HelloError) -> HelloError {
    if first {
        error
    } else {
        HelloError::Malformed("non-handshake record inside the client hello")
    }
}

/// Reads from `io` until a full ClientHello is parsed, failing closed; `timeout` bounds the WHOLE
/// read (a slow-drip client cannot extend it). Returns the hello and the raw bytes read (to
/// replay), which may run past the hello if the client sent more (early data).
pub async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> Result<(ClientHello, Vec<u8>), HelloError> {
    let mut reassembler = Reassembler::new();
    let hello = tokio::time::timeout(timeout, fill(io, &mut reassembler))
        .await
        .map_err(|_| HelloError::Timeout)??;
    Ok((hello, reassembler.into_raw()))
}

/// Feeds `reassembler` from `io` until it has a verdict or the client closes.
async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    reassembler: &mut Reassembler,
) -> Result<ClientHello, HelloError> {
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let n = io.read(&mut buf).await?;
        let Some(bytes) = buf.get(..n).filter(|b| !b.is_empty()) else {
            return Err(HelloError::Truncated);
        };
        if let Progress::Done(hello) = reassembler.push(bytes)? {
            return Ok(hello);
        }
    }
}

/// The extensions we read, each still encoded.
#[derive(Default)]
struct Extensions<'a> {
    server_name: Option<&'a [u8]>,
    alpn: Option<&'a [u8]>,
    supported_versions: Option<&'a [u8]>,
    key_share: Option<&'a [u8]>,
    /// The first of ECH / ESNI found (a hello with both is refused as ECH either way).
    encrypted: Option<Encrypted>,
}

/// Parses a complete handshake message (header included) already known to be a ClientHello.
fn parse(message: &[u8]) -> Result<ClientHello, HelloError> {
    let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
    // The body parser rather than `parse_tls_message_handshake`, which ignores trailing bytes.
    let (rest, hello) = parse_tls_handshake_client_hello(body)
        .map_err(|_| HelloError::Malformed("client hello body"))?;
    if !rest.is_empty() {
        return Err(HelloError::Malformed("client hello body"));
    }
    let extensions = split_extensions(hello.ext.unwrap_or_default())?;
    let sni = server_name(extensions.server_name.ok_or(HelloError::NoSni)?)?;
    Ok(ClientHello {
        sni,
        alpn: extensions.alpn.map(alpn).transpose()?.unwrap_or_default(),
        legacy_version: hello.version.0,
        supported_versions: extensions
            .supported_versions
            .map(supported_versions)
            .transpose()?
            .unwrap_or_default(),
        key_share_groups: extensions
            .key_share
            .map(key_share_groups)
            .transpose()?
            .unwrap_or_default(),
        encrypted: extensions.encrypted,
    })
}

/// Splits the extensions block, refusing bad framing and repeated types (RFC 8446 §4.2).
fn split_extensions(mut block: &[u8]) -> Result<Extensions<'_>, HelloError> {
    const FRAMING: HelloError = HelloError::Malformed("extension framing");
    let mut found = Extensions::default();
    let mut types = Vec::new();
    while !block.is_empty() {
        let (kind, rest) = take_u16(block).ok_or(FRAMING)?;
        let (len, rest) = take_u16(rest).ok_or(FRAMING)?;
        let (data, rest) = take(rest, usize::from(len)).ok_or(FRAMING)?;
        block = rest;
        types.push(kind);
        // Presence is what matters: the content is opaque (an HPKE ciphertext, or GREASE).
        let encrypted = match kind {
            EXT_ECH => Some(Encrypted::Ech),
            EXT_ESNI => Some(Encrypted::Esni),
            _ => None,
        };
        found.encrypted = found.encrypted.or(encrypted);
        let slot = match kind {
            EXT_SERVER_NAME => &mut found.server_name,
            EXT_ALPN => &mut found.alpn,
            EXT_SUPPORTED_VERSIONS => &mut found.supported_versions,
            EXT_KEY_SHARE => &mut found.key_share,
            _ => continue,
        };
        *slot = Some(data);
    }
    types.sort_unstable();
    if types.windows(2).any(|pair| pair.first() == pair.last()) {
        return Err(HelloError::Malformed("repeated extension"));
    }
    Ok(found)
}

/// The one host_name in a server_name extension, normalised (RFC 6066 §3).
fn server_name(data: &[u8]) -> Result<String, HelloError> {
    const BAD: HelloError = HelloError::Malformed("server_name extension");
    let Ok((rest, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data) else {
        return Err(BAD);
    };
    // tls-parser skips what it cannot parse inside the list: check that every byte was used.
    let used: usize = 2 + names.iter().map(|(_, name)| 3 + name.len()).sum::<usize>();
    if !rest.is_empty() || used != data.len() {
        return Err(BAD);
    }
    match names.as_slice() {
        [(kind, name)] if *kind == SNIType::HostName => normalize_sni(name),
        _ => Err(HelloError::InvalidSni),
    }
}

/// ALPN protocol names (RFC 7301 §3.1: a non-empty list of non-empty names).
fn alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, HelloError> {
    const BAD: HelloError = HelloError::Malformed("alpn extension");
    let Ok((rest, TlsExtension::ALPN(names))) = parse_tls_extension_alpn_content(data) else {
        return Err(BAD);
    };
    let used: usize = 2 + names.iter().map(|name| 1 + name.len()).sum::<usize>();
    if !rest.is_empty()
        || used != data.len()
        || names.is_empty()
        || names.iter().any(|n| n.is_empty())
    {
        return Err(BAD);
    }
    Ok(names.into_iter().map(<[u8]>::to_vec).collect())
}

/// The client form of supported_versions (RFC 8446 §4.2.1): a u8-length list of u16s.
/// By hand: tls-parser reads a 2-byte extension as the server form.
fn supported_versions(data: &[u8]) -> Result<Vec<u16>, HelloError> {
    const BAD: HelloError = HelloError::Malformed("supported_versions extension");
    let (&len, list) = data.split_first().ok_or(BAD)?;
    if usize::from(len) != list.len() || list.is_empty() || list.len() % 2 != 0 {
        return Err(BAD);
    }
    Ok(list
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect())
}

/// The groups of the client's key_share entries (RFC 8446 §4.2.8).
/// By hand: tls-parser returns this extension undecoded.
fn key_share_groups(data: &[u8]) -> Result<Vec<u16>, HelloError> {
    const BAD: HelloError = HelloError::Malformed("key_share extension");
    let (len, mut list) = take_u16(data).ok_or(BAD)?;
    if usize::from(len) != list.len() {
        return Err(BAD);
    }
    let mut groups = Vec::new();
    while !list.is_empty() {
        let (group, rest) = take_u16(list).ok_or(BAD)?;
        let (key_len, rest) = take_u16(rest).ok_or(BAD)?;
        if key_len == 0 {
            return Err(BAD);
        }
        let (_key, rest) = take(rest, usize::from(key_len)).ok_or(BAD)?;
        groups.push(group);
        list = rest;
    }
    Ok(groups)
}

/// Splits a big-endian u16 off the front of `input`.
fn take_u16(input: &[u8]) -> Option<(u16, &[u8])> {
    let (bytes, rest) = take(input, 2)?;
    Some((u16::from_be_bytes([*bytes.first()?, *bytes.last()?]), rest))
}

/// Splits `n` bytes off the front of `input`.
fn take(input: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (n <= input.len()).then(|| input.split_at(n))
}

/// Normalises a host_name with the policy's rules, so that routing compares like with like.
fn normalize_sni(name: &[u8]) -> Result<String, HelloError> {
    let name = std::str::from_utf8(name).map_err(|_| HelloError::InvalidSni)?;
    normalize_host(name).map_err(|e| match e {
        HostError::IpLiteral => HelloError::IpLiteralSni,
        HostError::Empty | HostError::TooLong | HostError::InvalidLabel(_) => {
            HelloError::InvalidSni
        }
    })
}
