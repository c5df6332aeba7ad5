//! Smoke tests of the benchmark harnesses, one test binary
//! (`cargo test -p tollgate-bench --test integration gateway_smoke::`). To add a file, add
//! `mod <name>;` below.

#![allow(clippy::unwrap_used)] // tests: a failure should just panic

mod gateway_smoke;
mod smoke;
