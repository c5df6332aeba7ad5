//! Fuzzes the ClientHello reassembler: no panic on any input, the verdict does not depend on how
//! the bytes are split into pushes, and no push leaves more than `MAX_HELLO_BYTES` buffered
//! without a verdict.
//!
//! Input: `[n, size_1 .. size_n, stream ..]`; `n % 8` chunk sizes (each `size + 1`, cycled) say
//! how `stream` is split into pushes; with none, it is pushed one byte at a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::fuzz::{ClientHello, MAX_HELLO_BYTES, Progress, Reassembler};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (sizes, stream) = rest.split_at(usize::from(n % 8).min(rest.len()));
    let whole = feed(std::iter::once(stream));
    let chunked = feed(Chunks {
        stream,
        sizes,
        next: 0,
    });
    assert_eq!(whole, chunked, "verdict depends on how the bytes arrive");
});

/// Pushes `chunks` in order: the first verdict (an error as its message), or `None`.
fn feed<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Option<Result<ClientHello, String>> {
    let mut reassembler = Reassembler::new();
    let mut pushed = 0;
    for chunk in chunks {
        pushed += chunk.len();
        let progress = reassembler.push(chunk);
        assert_eq!(reassembler.raw().len(), pushed, "raw keeps every byte");
        match progress {
            Ok(Progress::NeedMore) => {
                assert!(
                    pushed <= MAX_HELLO_BYTES,
                    "{pushed} bytes buffered without a verdict"
                )
            }
            Ok(Progress::Done(hello)) => return Some(Ok(hello)),
            Err(e) => return Some(Err(e.to_string())),
        }
    }
    None
}

/// `stream` cut into pieces of `sizes[i] + 1` bytes, cycling through `sizes` (1 byte if empty).
struct Chunks<'a> {
    stream: &'a [u8],
    sizes: &'a [u8],
    next: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.stream.is_empty() {
            return None;
        }
        let size = match self.sizes {
            [] => 1,
            sizes => usize::from(sizes[self.next % sizes.len()]) + 1,
        };
        self.next += 1;
        let (chunk, rest) = self.stream.split_at(size.min(self.stream.len()));
        self.stream = rest;
        Some(chunk)
    }
}
