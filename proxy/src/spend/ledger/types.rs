//! The ledger's value types: configuration, request and settlement records, errors.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::metrics::spend::SpendMetrics;
use crate::spend::journal::JournalError;
use crate::spend::money::Micros;
use crate::spend::source::SettlementSource;

/// A request refused because its minimum worst case does not fit what is left of the budget.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("budget exceeded: the request needs {needed} usd, {remaining} usd remain")]
pub struct BudgetExceeded {
    /// What was left for new reservations.
    pub remaining: Micros,
    /// The smallest worst case the request could have reserved.
    pub needed: Micros,
}

/// Why a reservation was not granted.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError<E> {
    /// The quote refused (unknown price, budget, malformed request).
    #[error(transparent)]
    Refused(E),
    /// The quote asked for more than remains.
    #[error(transparent)]
    Budget(BudgetExceeded),
    /// The reservation could not be journaled, so it was not granted (503, internal).
    #[error("ledger journal write failed: {0}")]
    Journal(io::Error),
}

/// Why the ledger could not open or flush.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Another file in the data dir.
    #[error("ledger data dir {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Ledger settings.
#[derive(Clone)]
pub struct LedgerConfig {
    /// The hard budget.
    pub budget: Micros,
    /// The evaluation run id written to the usage file.
    pub evaluation_run_id: String,
    /// Where the journal and usage files live; `None` keeps the ledger in memory only.
    pub data_dir: Option<PathBuf>,
    /// Series to keep current.
    pub metrics: Option<SpendMetrics>,
    /// The wall clock for timestamps (a seam for tests).
    pub clock: fn() -> SystemTime,
}

impl LedgerConfig {
    /// An in-memory ledger with `budget`; set `data_dir` to make it durable.
    pub fn new(budget: Micros, evaluation_run_id: impl Into<String>) -> Self {
        Self {
            budget,
            evaluation_run_id: evaluation_run_id.into(),
            data_dir: None,
            metrics: None,
            clock: SystemTime::now,
        }
    }
}

/// What the request is, for the journal and the per-request log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// The endpoint label (the reference wrote `chat`, `embedding`).
    pub endpoint: String,
    /// The requested model (the usage file's key).
    pub model: String,
}

/// How a request ended, as the gateway learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The amount to charge.
    pub cost: Micros,
    /// Where it came from.
    pub source: SettlementSource,
    /// The status returned to the agent.
    pub status_code: u16,
    /// The model that served the request.
    pub routed_model: Option<String>,
    /// The provider that served it.
    pub provider: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// The upstream generation id.
    pub generation_id: Option<String>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// The request's latency; default: time since the reservation.
    pub latency: Option<Duration>,
    /// A served-model check the response broke (`model`, `provider`).
    pub violation: Option<&'static str>,
}

impl Settlement {
    /// A settlement of `cost` from `source` with nothing else known.
    pub fn new(cost: Micros, source: SettlementSource, status_code: u16) -> Self {
        Self {
            cost,
            source,
            status_code,
            routed_model: None,
            provider: None,
            prompt_tokens: None,
            completion_tokens: None,
            generation_id: None,
            error: None,
            latency: None,
            violation: None,
        }
    }
}

/// The result of a settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// What this request was charged.
    pub charged: Micros,
    /// How far the charge exceeded the reservation (zero normally).
    pub overcharge: Micros,
    /// Settled spend after this settlement.
    pub total: Micros,
    /// What new requests may reserve after this settlement.
    pub remaining: Micros,
}

/// A consistent view of the ledger's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg(test)]
pub struct LedgerSnapshot {
    /// The budget.
    pub budget: Micros,
    /// Settled spend.
    pub settled: Micros,
    /// Reserved for requests in flight.
    pub reserved: Micros,
    /// What new requests may reserve.
    pub remaining: Micros,
    /// Sum of charges above their reservations (provider error).
    pub overcharge_excess: Micros,
    /// Settlements above their reservation.
    pub overcharges: u64,
    /// Reservations not yet settled.
    pub open_reservations: u64,
    /// Settled requests.
    pub requests: u64,
}

#[cfg(test)]
impl LedgerSnapshot {
    /// The invariant: settled + reserved ≤ budget, plus whatever providers overcharged.
    pub fn invariant_holds(&self) -> bool {
        u128::from(self.settled.0) + u128::from(self.reserved.0)
            <= u128::from(self.budget.0) + u128::from(self.overcharge_excess.0)
    }
}

/// What [`Ledger::open`](super::Ledger::open) restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Settled spend found in the journal, before recovering open reservations.
    pub settled: Micros,
    /// Reservations a crash left open, now settled at their worst case: (id, amount).
    pub recovered: Vec<(u64, Micros)>,
    /// Whether a torn last journal line was dropped.
    pub torn_tail: bool,
}
