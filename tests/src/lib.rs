//! Test support for tollgate's end-to-end tests: everything here drives the REAL `tollgate`
//! binary (spawned as a child process) against real peers on loopback or in network namespaces.
//!
//! Layout, in the order a test uses it:
//!
//! - [`pki`]: a throwaway CA (rcgen, ring), server/client rustls configs, the CA PEM for curl.
//! - [`tls_server`]: the upstream: a local TLS + HTTP/1.1/h2 server (`/`, `/bytes/N`, `/slow/N/MS`).
//! - [`policy`]: writes policy TOML, labels files and ConfigMap-style `..data` symlink swaps.
//! - [`proxy`]: spawns `tollgate`, reads its JSON log from stderr (ports, connection lines),
//!   scrapes `/metrics`, signals it, kills it on drop (printing its log if the test failed).
//! - [`scrape`]: raw HTTP responses and Prometheus text, as read from the admin port.
//! - [`clients`]: rustls + hyper client, curl runner, raw TCP client (send, drip, read to close).
//! - [`llm_client`]: an agent's view of an LLM API: hyper over rustls (h1/h2, streaming bodies,
//!   hang up mid-stream) and curl POSTs (collected, or read line by line with `-N`).
//! - [`hello`]: ClientHello bytes: a real one from rustls, or hand-made (odd SNI, padded, fragmented).
//! - [`fake_openrouter`]: the LLM gateway's upstream: OpenRouter's API shapes over TLS (its own
//!   CA), every request recorded, answers scripted per test (JSON, SSE, errors, cuts, lookups).
//! - [`fake_dns`]: the Pod's upstream resolver: answers A/AAAA from a table over UDP and TCP and
//!   records every query it receives (the DNS tests assert what never reached it).
//! - [`fixture`]: the usual loopback world: CA, upstream, client configs, the standard policy.
//! - [`gateway`]: the LLM gateway's world: the fake OpenRouter, a policy aiming `openrouter.ai`
//!   at it, the proxy's CA/spend directories, clients trusting the per-Pod CA, the usage files.
//! - [`squat`]: another process (another UID) holding one of tollgate's ports.
//! - [`netns`]: root-only network namespaces with TEST-NET addresses on a veth pair; removed on drop.
//!
//! Tests never use fixed ports on the host and never send traffic anywhere but loopback or
//! namespaces they created themselves.

#![warn(missing_docs)] // every pub item says what it is for (STYLE)
#![allow(clippy::unwrap_used)] // test support: a poisoned lock or a broken invariant should just panic

pub mod clients;
pub mod fake_dns;
pub mod fake_openrouter;
pub mod fixture;
pub mod gateway;
pub mod hello;
pub mod llm_client;
pub mod netns;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod scrape;
pub mod squat;
pub mod tls_server;

use std::future::Future;
use std::time::{Duration, Instant};

pub use netns::require_root;

/// `a == b` up to float noise (metric values and USD amounts read back from text).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The `data:` payloads of a Server-Sent Events text, in order (comments and blank lines dropped).
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.trim_start_matches('\n').strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Polls `probe` every 25 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
