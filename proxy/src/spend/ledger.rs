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
#[cfg(test)]
use std::convert::Infallible;
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::journal::{
    Journal, ModelTotals, OpenReservation, Record, Replay, UNKNOWN_SERVED, VERSION,
};
use super::money::Micros;
use super::report::{self, InferenceLine, UsageSnapshot};
use crate::metrics::spend::SpendMetrics;

mod flush;
mod types;

pub use super::source::SettlementSource;
pub use flush::Flusher;
#[cfg(test)]
pub use types::LedgerSnapshot;
pub use types::{
    BudgetExceeded, LedgerConfig, LedgerError, Recovery, RequestMeta, ReserveError, Settled,
    Settlement,
};

/// The journal file name inside the data dir.
pub const JOURNAL_FILE: &str = "proxy_ledger.jsonl";

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
    served: BTreeMap<String, ModelTotals>,
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
    #[cfg(test)]
    pub fn in_memory(budget: Micros) -> Ledger {
        Self::build(
            LedgerConfig::new(budget, "in-memory"),
            Replay::default(),
            None,
            None,
        )
    }

    /// Opens the ledger: replays `<data_dir>/proxy_ledger.jsonl`, settles reservations a crash
    /// left open at their worst case, and writes the usage file.
    pub fn open(cfg: LedgerConfig) -> Result<(Ledger, Recovery), LedgerError> {
        let Some(dir) = cfg.data_dir.clone() else {
            return Ok((
                Self::build(cfg, Replay::default(), None, None),
                Recovery::default(),
            ));
        };
        let io_err = |path: PathBuf| move |source| LedgerError::Io { path, source };
        fs::create_dir_all(&dir).map_err(io_err(dir.clone()))?;
        let (mut journal, mut replay) = Journal::open(&dir.join(JOURNAL_FILE))?;
        let jpath = journal.path().to_owned();
        let inferences =
            report::open_inferences(&dir).map_err(io_err(dir.join(report::INFERENCES_FILE)))?;
        let open = Record::Open {
            v: VERSION,
            run: cfg.evaluation_run_id.clone(),
            budget: cfg.budget,
            ts: report::timestamp((cfg.clock)()),
        };
        journal.append(&open).map_err(io_err(jpath.clone()))?;
        let sync = (journal.sync_handle().map_err(io_err(jpath.clone()))?, {
            inferences
                .try_clone()
                .map_err(io_err(dir.join(report::INFERENCES_FILE)))?
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

    fn build(
        cfg: LedgerConfig,
        replay: Replay,
        files: Option<(Journal, File)>,
        sync: Option<(File, File)>,
    ) -> Ledger {
        let (journal, inferences) = files.map_or((None, None), |(j, i)| (Some(j), Some(i)));
        let state = State {
            // After a restart with a lower budget, what was settled above it counts as excess.
            overcharge_excess: replay.totals.cost.saturating_sub(cfg.budget),
            totals: replay.totals,
            models: replay.models,
            served: replay.served,
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
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn remaining_in(&self, st: &State) -> Micros {
        self.shared
            .budget
            .saturating_sub(st.totals.cost.saturating_add(st.reserved))
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
            return Err(ReserveError::Budget(BudgetExceeded {
                remaining,
                needed: amount,
            }));
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
    #[cfg(test)]
    pub fn reserve_amount(
        &self,
        meta: RequestMeta,
        amount: Micros,
    ) -> Result<Reservation, ReserveError<Infallible>> {
        self.reserve(meta, |_| Ok((amount, ()))).map(|(r, ())| r)
    }

    fn settle_inner(&self, r: &Reservation, s: &Settlement) -> Settled {
        let mut st = self.lock();
        let (prompt, completion) = (
            s.prompt_tokens.unwrap_or(0),
            s.completion_tokens.unwrap_or(0),
        );
        if let Some(j) = st.journal.as_mut() {
            let record = Record::Settle {
                id: r.id,
                micros: s.cost,
                source: s.source,
                model: r.meta.model.clone(),
                prompt_tokens: prompt,
                completion_tokens: completion,
                served: s.routed_model.clone(),
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
        let served = s.routed_model.as_deref();
        self.add_settlement(&mut st, &r.meta.model, served, s.cost, prompt, completion);
        if let Some(m) = &self.shared.metrics {
            m.settled(&r.meta.model, s.cost, s.source, prompt, completion);
        }
        let latency = s.latency.unwrap_or_else(|| r.started.elapsed());
        let line = self.line(&st, &r.meta, s, Some(latency));
        self.append_line(&st, &line);
        self.update_gauges(&st);
        Settled {
            charged: s.cost,
            overcharge,
            total: st.totals.cost,
            remaining: self.remaining_in(&st),
        }
    }

    fn add_settlement(
        &self,
        st: &mut State,
        model: &str,
        served: Option<&str>,
        cost: Micros,
        prompt: u64,
        completion: u64,
    ) {
        st.totals.add(cost, prompt, completion);
        st.models
            .entry(model.to_owned())
            .or_default()
            .add(cost, prompt, completion);
        st.served
            .entry(served.unwrap_or(UNKNOWN_SERVED).to_owned())
            .or_default()
            .add(cost, prompt, completion);
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
                served: None,
            })?;
        }
        self.add_settlement(&mut st, &r.model, None, r.micros, 0, 0);
        if let Some(m) = &self.shared.metrics {
            m.settled(&r.model, r.micros, SettlementSource::WorstCase, 0, 0);
        }
        let meta = RequestMeta {
            endpoint: r.endpoint,
            model: r.model,
        };
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

    fn line(
        &self,
        st: &State,
        meta: &RequestMeta,
        s: &Settlement,
        latency: Option<Duration>,
    ) -> InferenceLine {
        InferenceLine {
            endpoint: meta.endpoint.clone(),
            model: meta.model.clone(),
            status_code: s.status_code,
            total_cost_usd: st.totals.cost.as_usd_f64(),
            budget_remaining_usd: self.remaining_in(st).as_usd_f64(),
            timestamp: report::timestamp((self.shared.clock)()),
            routed_model: s.routed_model.clone(),
            provider: s.provider.clone(),
            served_model: s.routed_model.clone(),
            served_provider: s.provider.clone(),
            served_violation: s.violation.map(str::to_owned),
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
    #[cfg(test)]
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
        UsageSnapshot::new(
            &self.shared.run_id,
            self.shared.budget,
            st.reserved,
            &st.totals,
            &st.models,
            &st.served,
        )
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
    #[cfg(test)]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The reserved worst case.
    pub fn amount(&self) -> Micros {
        self.amount
    }

    /// Settles at `s.cost` (charged in full even above the reservation) and releases the rest.
    pub fn settle(mut self, s: Settlement) -> Settled {
        self.armed = false;
        self.ledger.settle_inner(&self, &s)
    }

    /// Settles at the reserved worst case.
    #[cfg(test)]
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

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.id)
            .field("amount", &self.amount)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
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
