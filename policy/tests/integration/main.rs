//! Integration tests of `tollgate-policy`, one test binary with one module per area
//! (`cargo test -p tollgate-policy --test integration errors::`). To add a file, add
//! `mod <name>;` below.

#![allow(clippy::unwrap_used)] // tests: a failure should just panic

mod env;
mod errors;
mod examples;
