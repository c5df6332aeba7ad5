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
//!   decimal parsing and rounding rules: `tollgate_policy::money`, re-exported (the policy, the
//!   proxy and the launcher read and write USD with the same code).
//! - [`price`]: model prices from the policy and `GET /api/v1/models`; unpriced → refused.
//! - [`estimate`]: the worst-case cost of a request and the `max_tokens` clamp.
//! - [`ledger`]: reservations and settlements under the invariant settled + reserved ≤ budget.
//! - [`journal`]: the append-only journal that makes the ledger survive kill -9.
//! - [`report`]: the reference-compatible `proxy_usage.json` and `proxy_inferences.jsonl`.
//! - [`usage`]: cost, tokens, id, model, provider and errors from JSON responses and generation
//!   lookups; [`sse`]: the same, incrementally, from a stream.
//! - [`source`]: where a settled amount came from (a leaf: journal, ledger and metrics share it).
//!
//! Imports run one way: `ledger → {journal, report} → {source, money}`; the series this stage
//! updates live in the metrics catalog (`crate::metrics::spend`).
//!
//! # What the gateway calls, and when
//! 1. At start: [`Ledger::open`] (replays the journal, settles reservations a crash left open at
//!    their worst case), [`Ledger::spawn_flusher`]; build a [`PriceTable`] from the policy and,
//!    on each fetch of `GET /api/v1/models`, swap in `table.with_upstream(price::parse_models(body)?)`.
//! 2. Per request, after the request policy: [`RequestShape::from_json`] on the filtered body,
//!    then `ledger.reserve(meta, |remaining| estimate::quote(&shape, &prices, &cfg, remaining)
//!    .map(|q| (q.worst_case, q)))`; on success [`estimate::apply`] the quote to the body and
//!    forward it. Refusals: [`EstimateError::Budget`] → 429/402, [`EstimateError::Price`] →
//!    [`PriceError::http_status`], [`EstimateError::BadField`] → 400, [`ReserveError::Journal`]
//!    → 503; log them with [`Ledger::record_refusal`].
//! 3. After the response: the cost from [`usage::parse_response`] (JSON) or an
//!    [`sse::SseParser`] fed a copy of every chunk; without one, [`usage::parse_generation`] on
//!    `GET /api/v1/generation?id=` with backoff; then [`Reservation::settle`], or
//!    [`Reservation::settle_worst_case`]. Move the reservation into the task that settles it: a
//!    reservation dropped by a cancelled future settles at its worst case at once.
//! 4. At shutdown: `flusher.stop()` (fsync + usage file).

pub mod estimate;
pub mod journal;
pub mod ledger;
pub use tollgate_policy::money;
pub mod price;
pub mod report;
pub mod source;
pub mod sse;
pub mod usage;

pub use estimate::{EstimateConfig, EstimateError};
pub use ledger::{
    BudgetExceeded, Ledger, LedgerConfig, RequestMeta, Reservation, ReserveError, Settlement,
};
pub use money::Micros;
pub use price::{ModelPrice, PriceTable};
pub use source::SettlementSource;
