//! End-to-end tests of the real `tollgate` binary, one test binary for the whole crate (one link,
//! one process to start). Each module is one area; filter with the module path, e.g.
//! `cargo test -p tollgate-tests --test e2e soak::` or `--test e2e gateway_stream::`.
//! To add a test file, put it next to this one and add `mod <name>;` below.
//!
//! The shared support (proxy harness, PKI, fake peers, network namespaces) is the
//! `tollgate_tests` library in `tests/src/`.

#![allow(clippy::unwrap_used)] // tests: a failure should just panic

mod bounds;
mod capture;
mod cli;
mod dns_e2e;
mod evidence;
mod fake_openrouter;
mod gateway;
mod gateway_budget;
mod gateway_cost;
mod gateway_h2;
mod gateway_money;
mod gateway_pool;
mod gateway_refusals;
mod gateway_served;
mod gateway_stream;
mod limits;
mod netns_e2e;
mod reload;
mod run;
mod shutdown;
mod soak;
mod tunnel;
