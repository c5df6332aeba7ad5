//! The ledger: the hard budget's invariant, **settled + reserved ≤ budget**, under any
//! concurrency, made durable by the [journal](super::journal).
//!
//! - [`Ledger::reserve`] evaluates the caller's quote *under the ledger lock* with the remaining
//!   budget, checks it fits, journals it and counts it reserved: computing the clamp and reserving
//!   are one step, so concurrent requests cannot both take the same headroom.
//! - [`Reservation::settle`] journals the real cost, releases the reservation and charges the
//!   cost. A cost above the reservation (the provider billed more than the worst case allowed)
//!   is charged in full, logged and counted in `overcharge_excess`: the invariant is then
//!   `settled + reserved ≤ budget + overcharge_excess`, and new reservations only get what is
//!   left of the budget (nothing, once an overcharge used it up).
//! - Dropping a [`Reservation`] without settling settles it at its worst case (fail closed).
//! - [`Ledger::open`] replays the journal: settled spend is restored, and every reservation a
//!   crash left open is settled at its worst case before the first new request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::journal::{Journal, JournalError, ModelTotals, OpenReservation, Record, Replay, VERSION};
use super::metrics::SpendMetrics;
use super::money::Micros;
use super::report::{self, InferenceLine, UsageSnapshot};

/// The journal file name inside the data dir.
pub const JOURNAL_FILE: &str = "proxy_ledger.jsonl";

/// A request refused because its minimum worst case does not fit what is left of the budget.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("budget exceeded: the request needs {needed} usd, {remaining} usd remain")]
pub struct BudgetExceeded {
    /// What was left for new reservations.
    pub remaining: Micros,
    /// The smallest worst case the request could have reserved.
    pub needed: Micros,
}

/// What a settled amount came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SettlementSource {
    /// `usage.cost` from the JSON body or the final SSE event.
    Usage,
    /// `GET /api/v1/generation?id=...`.
    Generation,
    /// The reserved worst case (no cost could be learned, or the reservation was dropped).
    WorstCase,
}

impl SettlementSource {
    /// The source as a log field and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementSource::Usage => "usage",
            SettlementSource::Generation => "generation",
            SettlementSource::WorstCase => "worst-case",
        }
    }
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

impl LedgerSnapshot {
    /// The invariant: settled + reserved ≤ budget, plus whatever providers overcharged.
    pub fn invariant_holds(&self) -> bool {
        u128::from(self.settled.0) + u128::from(self.reserved.0)
            <= u128::from(self.budget.0) + u128::from(self.overcharge_excess.0)
    }
}

/// What [`Ledger::open`] restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Settled spend found in the journal, before recovering open reservations.
    pub settled: Micros,
    /// Reservations a crash left open, now settled at their worst case: (id, amount).
    pub recovered: Vec<(u64, Micros)>,
    /// Whether a torn last journal line was dropped.
    pub torn_tail: bool,
}

/// The budget ledger; cheap to clone (shared state).
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
}

struct Shared {
    budget: Micros,
    run_id: String,
    clock: fn() -> SystemTime,
    metrics: Option<SpendMetrics>,
    dir: Option<PathBuf>,
    /// Handles for fsync outside the state lock: (journal, inferences).
    sync: Option<(File, File)>,
    /// Serialises usage-file writes so an older snapshot never replaces a newer one.
    flush_lock: Mutex<()>,
    state: Mutex<State>,
}

struct State {
    totals: ModelTotals,
    models: BTreeMap<String, ModelTotals>,
    reserved: Micros,
    overcharge_excess: Micros,
    overcharges: u64,
    open: u64,
    next_id: u64,
    journal: Option<Journal>,
    inferences: Option<File>,
    dirty: bool,
}

impl Ledger {
    /// An in-memory ledger (no files): for tests and for running without a data dir.
    pub fn in_memory(budget: Micros) -> Ledger {
        Self::build(LedgerConfig::new(budget, "in-memory"), Replay::default(), None, None)
    }

    /// Opens the ledger: replays `<data_dir>/proxy_ledger.jsonl`, settles reservations a crash
    /// left open at their worst case, and writes the usage file.
    pub fn open(cfg: LedgerConfig) -> Result<(Ledger, Recovery), LedgerError> {
        let Some(dir) = cfg.data_dir.clone() else {
            return Ok((Self::build(cfg, Replay::default(), None, None), Recovery::default()));
        };
        let io_err = |path: PathBuf| move |source| LedgerError::Io { path, source };
        fs::create_dir_all(&dir).map_err(io_err(dir.clone()))?;
        let (mut journal, mut replay) = Journal::open(&dir.join(JOURNAL_FILE))?;
        let jpath = journal.path().to_owned();
        let inferences = report::open_inferences(&dir).map_err(io_err(dir.join(report::INFERENCES_FILE)))?;
        let open = Record::Open {
            v: VERSION,
            run: cfg.evaluation_run_id.clone(),
            budget: cfg.budget,
            ts: report::timestamp((cfg.clock)()),
        };
        journal.append(&open).map_err(io_err(jpath.clone()))?;
        let sync = (journal.sync_handle().map_err(io_err(jpath.clone()))?, {
            inferences.try_clone().map_err(io_err(dir.join(report::INFERENCES_FILE)))?
        });
        let left_open = std::mem::take(&mut replay.open);
        let recovery = Recovery {
            settled: replay.totals.cost,
            recovered: left_open.iter().map(|(id, r)| (*id, r.micros)).collect(),
            torn_tail: replay.torn_tail,
        };
        let ledger = Self::build(cfg, replay, Some((journal, inferences)), Some(sync));
        for (id, r) in left_open {
            ledger.recover(id, r).map_err(io_err(jpath.clone()))?;
        }
        ledger.flush()?;
        Ok((ledger, recovery))
    }

    fn build(cfg: LedgerConfig, replay: Replay, files: Option<(Journal, File)>, sync: Option<(File, File)>) -> Ledger {
        let (journal, inferences) = files.map_or((None, None), |(j, i)| (Some(j), Some(i)));
        let state = State {
            // After a restart with a lower budget, what was settled above it counts as excess.
            overcharge_excess: replay.totals.cost.saturating_sub(cfg.budget),
            totals: replay.totals,
            models: replay.models,
            reserved: Micros::ZERO,
            overcharges: 0,
            open: 0,
            next_id: replay.next_id,
            journal,
            inferences,
            dirty: true,
        };
        let ledger = Ledger {
            shared: Arc::new(Shared {
                budget: cfg.budget,
                run_id: cfg.evaluation_run_id,
                clock: cfg.clock,
                metrics: cfg.metrics,
                dir: cfg.data_dir,
                sync,
                flush_lock: Mutex::new(()),
                state: Mutex::new(state),
            }),
        };
        ledger.update_gauges(&ledger.lock());
        ledger
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State is only mutated after every fallible step, so a panic elsewhere (e.g. in a
        // quote closure) leaves it consistent.
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remaining_in(&self, st: &State) -> Micros {
        self.shared.budget.saturating_sub(st.totals.cost.saturating_add(st.reserved))
    }

    /// Reserves the amount `quote` returns for the remaining budget, atomically: `quote` runs
    /// under the ledger lock (keep it short and pure), and its amount must fit what remains.
    pub fn reserve<T, E>(
        &self,
        meta: RequestMeta,
        quote: impl FnOnce(Micros) -> Result<(Micros, T), E>,
    ) -> Result<(Reservation, T), ReserveError<E>> {
        let mut st = self.lock();
        let remaining = self.remaining_in(&st);
        let (amount, extra) = quote(remaining).map_err(ReserveError::Refused)?;
        if amount > remaining {
            return Err(ReserveError::Budget(BudgetExceeded { remaining, needed: amount }));
        }
        let id = st.next_id;
        if let Some(j) = st.journal.as_mut() {
            let record = Record::Reserve {
                id,
                micros: amount,
                model: meta.model.clone(),
                endpoint: meta.endpoint.clone(),
            };
            if let Err(e) = j.append(&record) {
                tracing::error!(error = %e, "ledger journal write failed; refusing the reservation");
                self.count_write_error();
                return Err(ReserveError::Journal(e));
            }
        }
        st.next_id += 1;
        st.reserved = st.reserved.saturating_add(amount);
        st.open += 1;
        st.dirty = true;
        self.update_gauges(&st);
        drop(st);
        let reservation = Reservation {
            ledger: self.clone(),
            id,
            amount,
            meta,
            started: Instant::now(),
            armed: true,
        };
        Ok((reservation, extra))
    }

    /// Reserves a fixed `amount` if it fits.
    pub fn reserve_amount(&self, meta: RequestMeta, amount: Micros) -> Result<Reservation, ReserveError<Infallible>> {
        self.reserve(meta, |_| Ok((amount, ()))).map(|(r, ())| r)
    }

    fn settle_inner(&self, r: &Reservation, s: &Settlement) -> Settled {
        let mut st = self.lock();
        let (prompt, completion) = (s.prompt_tokens.unwrap_or(0), s.completion_tokens.unwrap_or(0));
        if let Some(j) = st.journal.as_mut() {
            let record = Record::Settle {
                id: r.id,
                micros: s.cost,
                source: s.source,
                model: r.meta.model.clone(),
                prompt_tokens: prompt,
                completion_tokens: completion,
            };
            // Safe to go on: the reservation stays open in the journal, so a restart charges
            // its worst case (≥ this cost unless this is an overcharge).
            if let Err(e) = j.append(&record) {
                tracing::error!(error = %e, id = r.id, "ledger journal write failed for a settlement");
                self.count_write_error();
            }
        }
        st.reserved = st.reserved.saturating_sub(r.amount);
        st.open = st.open.saturating_sub(1);
        let overcharge = s.cost.saturating_sub(r.amount);
        if overcharge > Micros::ZERO {
            st.overcharge_excess = st.overcharge_excess.saturating_add(overcharge);
            st.overcharges += 1;
            tracing::warn!(
                id = r.id, model = %r.meta.model, reserved = %r.amount, charged = %s.cost,
                "provider charged more than the reserved worst case; charged in full"
            );
            if let Some(m) = &self.shared.metrics {
                m.overcharges.inc();
            }
        }
        self.add_settlement(&mut st, &r.meta.model, s.cost, prompt, completion);
        if let Some(m) = &self.shared.metrics {
            m.settled(&r.meta.model, s.cost, s.source, prompt, completion);
        }
        let latency = s.latency.unwrap_or_else(|| r.started.elapsed());
        let line = self.line(&st, &r.meta, s, Some(latency));
        self.append_line(&st, &line);
        self.update_gauges(&st);
        Settled { charged: s.cost, overcharge, total: st.totals.cost, remaining: self.remaining_in(&st) }
    }

    fn add_settlement(&self, st: &mut State, model: &str, cost: Micros, prompt: u64, completion: u64) {
        st.totals.add(cost, prompt, completion);
        st.models.entry(model.to_owned()).or_default().add(cost, prompt, completion);
        st.dirty = true;
    }

    /// Settles a reservation found open at start at its worst case.
    fn recover(&self, id: u64, r: OpenReservation) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(j) = st.journal.as_mut() {
            j.append(&Record::Settle {
                id,
                micros: r.micros,
                source: SettlementSource::WorstCase,
                model: r.model.clone(),
                prompt_tokens: 0,
                completion_tokens: 0,
            })?;
        }
        self.add_settlement(&mut st, &r.model, r.micros, 0, 0);
        if let Some(m) = &self.shared.metrics {
            m.settled(&r.model, r.micros, SettlementSource::WorstCase, 0, 0);
        }
        let meta = RequestMeta { endpoint: r.endpoint, model: r.model };
        let mut s = Settlement::new(r.micros, SettlementSource::WorstCase, 0);
        s.error = Some("open at restart: settled at its worst case".to_owned());
        let line = self.line(&st, &meta, &s, None);
        self.append_line(&st, &line);
        self.update_gauges(&st);
        Ok(())
    }

    /// Logs a request refused before any reservation (policy, budget) in the per-request log,
    /// as the reference did; it charges nothing.
    pub fn record_refusal(&self, meta: &RequestMeta, status_code: u16, error: &str) {
        let st = self.lock();
        let mut s = Settlement::new(Micros::ZERO, SettlementSource::WorstCase, status_code);
        s.error = Some(error.to_owned());
        let mut line = self.line(&st, meta, &s, None);
        line.cost_usd = None;
        line.settlement_source = None;
        self.append_line(&st, &line);
    }

    fn line(&self, st: &State, meta: &RequestMeta, s: &Settlement, latency: Option<Duration>) -> InferenceLine {
        InferenceLine {
            endpoint: meta.endpoint.clone(),
            model: meta.model.clone(),
            status_code: s.status_code,
            total_cost_usd: st.totals.cost.as_usd_f64(),
            budget_remaining_usd: self.remaining_in(st).as_usd_f64(),
            timestamp: report::timestamp((self.shared.clock)()),
            routed_model: s.routed_model.clone(),
            provider: s.provider.clone(),
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            cost_usd: Some(s.cost.as_usd_f64()),
            latency_ms: latency.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            generation_id: s.generation_id.clone(),
            error: s.error.clone(),
            settlement_source: Some(s.source.as_str().to_owned()),
        }
    }

    fn append_line(&self, st: &State, line: &InferenceLine) {
        let Some(f) = &st.inferences else {
            return;
        };
        if let Err(e) = report::append_line(f, line) {
            tracing::warn!(error = %e, "could not append to {}", report::INFERENCES_FILE);
            self.count_write_error();
        }
    }

    fn count_write_error(&self) {
        if let Some(m) = &self.shared.metrics {
            m.ledger_write_errors.inc();
        }
    }

    fn update_gauges(&self, st: &State) {
        if let Some(m) = &self.shared.metrics {
            m.set_budget(self.shared.budget, self.remaining_in(st), st.reserved);
        }
    }

    /// A consistent view of the numbers.
    pub fn snapshot(&self) -> LedgerSnapshot {
        let st = self.lock();
        LedgerSnapshot {
            budget: self.shared.budget,
            settled: st.totals.cost,
            reserved: st.reserved,
            remaining: self.remaining_in(&st),
            overcharge_excess: st.overcharge_excess,
            overcharges: st.overcharges,
            open_reservations: st.open,
            requests: st.totals.requests,
        }
    }

    /// The usage snapshot (`proxy_usage.json`, `GET /api/v1/usage`).
    pub fn usage(&self) -> UsageSnapshot {
        let st = self.lock();
        UsageSnapshot::new(&self.shared.run_id, self.shared.budget, st.reserved, &st.totals, &st.models)
    }

    /// fsyncs the journal and the per-request log and rewrites the usage file (atomically).
    pub fn flush(&self) -> Result<(), LedgerError> {
        let Some(dir) = &self.shared.dir else {
            return Ok(());
        };
        let _one_at_a_time = self.shared.flush_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = {
            let mut st = self.lock();
            st.dirty = false;
            UsageSnapshot::new(&self.shared.run_id, self.shared.budget, st.reserved, &st.totals, &st.models)
        };
        let result = self.write_out(dir, &snapshot);
        if result.is_err() {
            self.lock().dirty = true;
            self.count_write_error();
        }
        result
    }

    fn write_out(&self, dir: &std::path::Path, snapshot: &UsageSnapshot) -> Result<(), LedgerError> {
        let io_err = |path: PathBuf| move |source| LedgerError::Io { path, source };
        if let Some((journal, inferences)) = &self.shared.sync {
            journal.sync_data().map_err(io_err(dir.join(JOURNAL_FILE)))?;
            inferences.sync_data().map_err(io_err(dir.join(report::INFERENCES_FILE)))?;
        }
        snapshot.write_atomic(dir).map_err(io_err(dir.join(report::USAGE_FILE)))
    }

    /// Flushes if anything changed since the last flush.
    pub fn flush_if_dirty(&self) -> Result<(), LedgerError> {
        if self.lock().dirty { self.flush() } else { Ok(()) }
    }

    /// Starts a thread that flushes every `every` while anything changed; stop it at shutdown.
    pub fn spawn_flusher(&self, every: Duration) -> io::Result<Flusher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (ledger, signal) = (self.clone(), Arc::clone(&stop));
        let handle = std::thread::Builder::new().name("ledger-flush".into()).spawn(move || {
            let (lock, cvar) = &*signal;
            let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while !*stopped {
                stopped = cvar.wait_timeout(stopped, every).unwrap_or_else(PoisonError::into_inner).0;
                if let Err(e) = ledger.flush_if_dirty() {
                    tracing::warn!(error = %e, "ledger flush failed");
                }
            }
        })?;
        Ok(Flusher { stop, handle: Some(handle), ledger: self.clone() })
    }
}

/// The background flusher; [`Flusher::stop`] it at shutdown (a final fsync and usage write).
pub struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
    ledger: Ledger,
}

impl Flusher {
    fn halt(&mut self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cvar.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    /// Stops the thread and flushes one last time.
    pub fn stop(mut self) -> Result<(), LedgerError> {
        self.halt();
        self.ledger.flush()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A granted reservation. Settle it with the real cost; dropped unsettled, it is settled at its
/// worst case (fail closed).
pub struct Reservation {
    ledger: Ledger,
    id: u64,
    amount: Micros,
    meta: RequestMeta,
    started: Instant,
    armed: bool,
}

impl Reservation {
    /// The reservation id (in the journal).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The reserved worst case.
    pub fn amount(&self) -> Micros {
        self.amount
    }

    /// The request it was made for.
    pub fn meta(&self) -> &RequestMeta {
        &self.meta
    }

    /// Settles at `s.cost` (charged in full even above the reservation) and releases the rest.
    pub fn settle(mut self, s: Settlement) -> Settled {
        self.armed = false;
        self.ledger.settle_inner(&self, &s)
    }

    /// Settles at the reserved worst case.
    pub fn settle_worst_case(self, status_code: u16, error: Option<String>) -> Settled {
        let mut s = Settlement::new(self.amount, SettlementSource::WorstCase, status_code);
        s.error = error;
        self.settle(s)
    }

    /// Simulates the process dying while this reservation is open (tests only).
    #[cfg(test)]
    pub(crate) fn abandon(mut self) {
        self.armed = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            let mut s = Settlement::new(self.amount, SettlementSource::WorstCase, 0);
            s.error = Some("dropped before settlement: settled at its worst case".to_owned());
            self.ledger.settle_inner(self, &s);
        }
    }
}

#[cfg(test)]
mod tests;
