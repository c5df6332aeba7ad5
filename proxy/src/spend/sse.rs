//! An incremental parser for OpenRouter's SSE streams, fed copies of the bytes the gateway
//! forwards (it never holds the stream back): chunks split anywhere, `data:` lines (several per
//! event are joined with `\n`), `\n`, `\r\n` or `\r` line ends, comments such as
//! `: OPENROUTER PROCESSING`, and `data: [DONE]`. It keeps the stream's id, model and provider,
//! the last `usage` (OpenRouter sends it in the final event) and the first mid-stream `error`.
//!
//! Memory is bounded: the pending line plus the pending event's data may not exceed the limit
//! (1 MiB by default). Past it the parser stops for good (`overflowed`) and keeps what it had:
//! fail soft, the gateway settles by generation lookup. Whether and where it overflows depends
//! only on the bytes, not on how they were chunked ([`fuzz_chunked`] checks exactly that).

use super::usage::{ResponseSummary, parse_response};

/// The default bound on one event (pending line plus data).
pub const DEFAULT_EVENT_LIMIT: usize = 1 << 20;

/// What a stream told so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Id, model, provider, usage and error, merged over the events.
    pub response: ResponseSummary,
    /// `data: [DONE]` was seen.
    pub done: bool,
    /// Events dispatched (with data, `[DONE]` included).
    pub events: u64,
    /// Comment lines (keep-alives).
    pub comments: u64,
    /// Events whose data was not a JSON object.
    pub malformed: u64,
    /// The bound was exceeded and parsing stopped.
    pub overflowed: bool,
}

/// The incremental parser.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The last chunk ended in `\r`: a `\n` starting the next one belongs to it.
    skip_lf: bool,
    limit: usize,
    summary: StreamSummary,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default 1 MiB bound.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_EVENT_LIMIT)
    }

    /// A parser whose pending line plus event data may not exceed `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            skip_lf: false,
            limit,
            summary: StreamSummary::default(),
        }
    }

    /// What the stream told so far.
    pub fn summary(&self) -> &StreamSummary {
        &self.summary
    }

    /// Observes the next chunk of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while !chunk.is_empty() && !self.summary.overflowed {
            let Some(i) = chunk.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                self.line.extend_from_slice(chunk);
                if self.line.len() + self.data.len() > self.limit {
                    self.overflow();
                }
                return;
            };
            let (body, term) = (&chunk[..i], chunk[i]);
            chunk = &chunk[i + 1..];
            if term == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            if self.line.is_empty() {
                self.complete_line(body);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(body);
                self.complete_line(&line);
                line.clear();
                self.line = line; // keep the allocation
            }
        }
    }

    /// Ends the stream and returns the summary. Leniently, a last line or event that lacks its
    /// terminator is still read (it can only add a real cost; a cut JSON does not parse).
    pub fn finish(mut self) -> StreamSummary {
        if !self.summary.overflowed {
            if !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                self.complete_line(&line);
            }
            self.dispatch();
        }
        self.summary
    }

    /// Stops parsing for good and frees the buffers.
    fn overflow(&mut self) {
        self.summary.overflowed = true;
        self.line = Vec::new();
        self.data = Vec::new();
        self.has_data = false;
    }

    /// Handles one complete line (without its terminator). The bound is checked on the whole
    /// line, as on every partial line before it, so chunking cannot move the overflow.
    fn complete_line(&mut self, line: &[u8]) {
        if line.len() + self.data.len() > self.limit {
            return self.overflow();
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            self.summary.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => (
                &line[..i],
                line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..]),
            ),
            None => (line, &b""[..]),
        };
        // `event`, `id` and `retry` carry nothing the budget needs.
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
    }

    fn dispatch(&mut self) {
        if !self.has_data {
            return;
        }
        self.has_data = false;
        self.summary.events += 1;
        let data = &self.data[..];
        if data == b"[DONE]" {
            self.summary.done = true;
        } else if self.summary.response.has_identity()
            && !contains(data, b"usage")
            && !contains(data, b"error")
        {
            // A content delta once id/model/provider are known: nothing to learn, skip the parse.
        } else {
            match parse_response(data) {
                Some(part) => self.summary.response.merge(part),
                None => self.summary.malformed += 1,
            }
        }
        self.data.clear();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses a whole stream at once.
#[cfg(test)]
pub fn parse_sse(input: &[u8]) -> StreamSummary {
    let mut p = SseParser::new();
    p.feed(input);
    p.finish()
}

/// The fuzz entry point (`fuzz/` calls it with arbitrary bytes): parses `input` whole and in
/// chunks whose sizes come from the input itself, with a small bound so overflows happen too,
/// and panics if the two summaries differ (or on any panic inside the parser).
pub fn fuzz_chunked(input: &[u8]) {
    const LIMIT: usize = 256;
    let mut whole = SseParser::with_limit(LIMIT);
    whole.feed(input);
    let whole = whole.finish();
    let mut chunked = SseParser::with_limit(LIMIT);
    let mut rest = input;
    let mut k = 0usize;
    while !rest.is_empty() {
        let n = input[k % input.len()] % 8;
        if n == 0 {
            chunked.feed(&[]);
        }
        let size = usize::from(n.max(1)).min(rest.len());
        chunked.feed(&rest[..size]);
        rest = &rest[size..];
        k += 1;
    }
    let chunked = chunked.finish();
    assert_eq!(whole, chunked, "chunking changed the parse");
}

#[cfg(test)]
mod tests;
