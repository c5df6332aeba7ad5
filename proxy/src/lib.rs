//! tollgate: a transparent egress proxy and SNI router.
//!
//! Layout (a connection passes through these stages, top to bottom):
//!
//! ```text
//! accept → orig_dst → client_hello → route → { tunnel | intercept → enforce → upstream → spend | reject }
//!            ^ phase, reload feed route the current phase and policy; metrics and admin observe
//! capture listener: accept → orig_dst → route (by destination) → { tunnel to it | reject }
//! dns listener: query → dns::decide (name as route would, phase, policy) → { forward | local answer }
//!
//! gateway (intercept::gateway: TLS with the per-Pod CA, then an HTTP server), per request:
//!   exchange: enforce (host, endpoint, key, workspace, rate, slot) → body → enforce::admit_body
//!             → spend::estimate → ledger.reserve ─────────────── refused ─┐
//!   settle:   upstream::send → { JSON | SSE pump } → Pending settles:    │
//!             usage | generation lookup | worst case (also when dropped) │
//!   record:   one line and the metrics for every request ◄───────────────┘
//!             (refused, usage, free, metered)
//!   ^ intercept::state (a leaf) is shared by them all; pricing and workspace refresh it
//! ```
//!
//! - [`accept`]: listeners, the connection limit, graceful drain; runs one [`connection`] per socket.
//! - [`orig_dst`]: the pre-REDIRECT destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
//! - [`client_hello`]: reassembles and parses the TLS ClientHello (SNI, ALPN, whether it carries
//!   ECH/ESNI), fail closed.
//! - [`route`]: the pure decision `(hello, orig_dst, phase, policy) → Decision` (ECH screen
//!   included); for captured connections `(orig_dst, phase, policy, own ports)`, address filter included.
//! - [`tunnel`]: resolve, filter and dial the SNI host; replay the hello; copy both ways.
//! - [`intercept`]: the seam, and the LLM gateway behind it. `intercept::gateway` builds the
//!   shared `intercept::state` and terminates TLS; per request, `intercept::exchange` admits,
//!   prices and reserves, `intercept::settle` forwards and settles through one `Pending` value,
//!   and `intercept::record` writes the request's one line and counts it; `intercept::pricing`
//!   and `intercept::workspace` keep prices and the privacy check current in the background.
//! - [`enforce`]: the request policy (endpoint, credentials, fields, models, providers), and
//!   `enforce::Refusal` with one `enforce::Reason` per cause.
//! - [`upstream`]: the pooled TLS client to the real API, honouring the policy's pins, and the one
//!   "request within a timeout, read a size-limited body" helper (`upstream::fetch`).
//! - [`spend`]: prices, the worst-case estimate, the budget ledger and its journal.
//! - [`dns`]: the Pod's DNS: answers locally or forwards a name only if the policy could route it.
//! - [`phase`]: the Pod's phase from the downward-API labels file, sentinel file or policy.
//! - [`reload`]: watches the policy file and swaps in each good version.
//! - [`evidence`]: the hash-chained decision log, the run receipt and `tollgate replay`.
//! - [`metrics`]: the one metrics catalog; [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`server`]: assembles the stages; [`cli`]: the binary's flags, logging and signals;
//!   [`bind`]: binds the listeners, waiting out a port another process holds; [`probe`]: a
//!   readiness check (`tollgate probe`) that a squatter on the admin port cannot forge.
//! - [`run`]: `tollgate run -- CMD`: the same stages around one command on one machine, its
//!   listeners in a sandbox network namespace that holds the Pod's rules.

#![forbid(unsafe_code)]

pub(crate) mod accept;
pub(crate) mod admin;
pub(crate) mod bind;
pub(crate) mod cli;
pub(crate) mod client_hello;
pub(crate) mod connection;
pub(crate) mod dns;
pub(crate) mod enforce;
pub(crate) mod evidence;
pub(crate) mod intercept;
pub(crate) mod metrics;
pub(crate) mod orig_dst;
pub(crate) mod phase;
pub(crate) mod probe;
pub(crate) mod reload;
pub(crate) mod route;
pub(crate) mod run;
pub(crate) mod server;
pub(crate) mod spend;
pub(crate) mod tunnel;
pub(crate) mod upstream;

// The public facade: everything else is crate-private, so the compiler reports what nothing uses.
// It is what the binary, the tests, the benchmarks and the fuzz targets need, and no more.

/// The binary's whole `main` (`src/main.rs` only calls it): flags, logging, signals, the server.
pub use cli::main;
/// The connection and refusal reasons, read by the test that keeps README.md's reason tables in
/// step with them.
pub use enforce::Reason as RefusalReason;
/// The metrics catalog, read by the test that keeps README.md's metrics table in step with it.
pub use metrics::{Metrics, SpendMetrics};
pub use route::Reason as ConnectionReason;

/// The pure parsers of untrusted bytes, for the fuzz targets (`fuzz/fuzz_targets/*.rs`).
pub mod fuzz {
    pub use crate::client_hello::{ClientHello, MAX_HELLO_BYTES, Progress, Reassembler};
    pub use crate::dns::decide;
    pub use crate::enforce::admit_body;
    pub use crate::spend::sse::fuzz_chunked;
}

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this binary was built from (see build.rs), or `unknown`.
pub const COMMIT: &str = env!("TOLLGATE_COMMIT");
