//! The SSE usage parser: any bytes, in any chunking, give the same summary and never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::fuzz_chunked(data);
});
