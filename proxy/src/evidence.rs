//! Evidence an evaluator can check after a run, without trusting the agent: every decision
//! (each connection's, each LLM request's, each policy version and phase change) is appended to
//! `<data dir>/proxy_decisions.jsonl`, each line carrying the SHA-256 of the line before it, and
//! `run_receipt.json` sums the chain up and names its head.
//!
//! - [`record`]: the line format (one serde type per record kind).
//! - [`chain`]: the hash chain and the fold that turns lines into a [`chain::Summary`]; used by
//!   the writer, by restart and by `tollgate verify-receipt`, so all three agree by construction.
//! - [`recorder`]: the single writer (a queue to one writer thread), restart-safe.
//! - [`receipt`]: `run_receipt.json`, and its offline verification.
//! - [`replay`]: re-decides recorded connections under a candidate policy (`tollgate replay`).
//! - [`suggest`]: a minimal policy from an observe-mode run (`tollgate suggest`).

pub mod chain;
pub mod receipt;
pub mod record;
pub mod recorder;
pub mod replay;
pub mod suggest;

pub use recorder::Recorder;
