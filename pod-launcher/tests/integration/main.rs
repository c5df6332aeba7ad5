//! Integration tests of `tollgate-launch`, one test binary with one module per area
//! (`cargo test -p tollgate-launch --test integration golden::`). To add a file, add
//! `mod <name>;` below.

#![allow(clippy::unwrap_used)] // tests: a failure should just panic

mod api;
mod budget;
mod golden;
mod log_colour;
mod registry;
