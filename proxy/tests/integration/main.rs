//! Integration tests of the `tollgate` crate, one test binary with one module per area
//! (`cargo test -p tollgate --test integration cli::`). To add a file, add `mod <name>;` below.
//! The end-to-end tests against the running binary live in the `tollgate-tests` crate.

#![allow(clippy::unwrap_used)] // tests: a failure should just panic

mod cli;
mod log_colour;
mod metrics_table;
mod reasons_table;
