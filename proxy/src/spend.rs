//! spend: the hard budget. Pure building blocks the LLM gateway calls around each request.
//!
//! ```text
//! price ─┐
//!        ├→ estimate::quote ─→ ledger.reserve ─→ (forward) ─→ usage / sse ─→ reservation.settle
//! body ──┘   (worst case,       (atomic, journaled)            (real cost)     (journaled; rest released)
//!             max_tokens clamp)
//! ```
//!
//! - [`money`]: [`Micros`] (micro-USD amounts) and [`UnitPrice`] (pico-USD per unit), exact
//!   decimal parsing and rounding rules.
//! - [`price`]: model prices from the policy and `GET /api/v1/models`; unpriced → refused.
//! - [`estimate`]: the worst-case cost of a request and the `max_tokens` clamp.
//! - [`ledger`]: reservations and settlements under the invariant settled + reserved ≤ budget.
//! - [`journal`]: the append-only journal that makes the ledger survive kill -9.
//! - [`report`]: the reference-compatible `proxy_usage.json` and `proxy_inferences.jsonl`.
//! - [`usage`]: cost, tokens, id, model, provider and errors from JSON responses and generation
//!   lookups; [`sse`]: the same, incrementally, from a stream.
//! - [`metrics`]: the series this stage owns.

pub mod estimate;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod money;
pub mod price;
pub mod report;
pub mod sse;
pub mod usage;

pub use estimate::{EstimateConfig, EstimateError, OutputField, Quote, RequestShape};
pub use ledger::{
    BudgetExceeded, Ledger, LedgerConfig, RequestMeta, ReserveError, Reservation, Settlement, SettlementSource,
};
pub use money::{Micros, UnitPrice};
pub use price::{ModelPrice, PriceError, PriceTable};
