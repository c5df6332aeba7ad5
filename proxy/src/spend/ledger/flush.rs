//! Durability off the request path: fsync of the journal and the per-request log, and the
//! atomic rewrite of the usage file, on demand or from a background thread.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{JOURNAL_FILE, Ledger, LedgerError};
use crate::spend::report::{self, UsageSnapshot};

impl Ledger {
    /// fsyncs the journal and the per-request log and rewrites the usage file (atomically).
    pub fn flush(&self) -> Result<(), LedgerError> {
        let Some(dir) = &self.shared.dir else {
            return Ok(());
        };
        let _one_at_a_time = self
            .shared
            .flush_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let snapshot = {
            let mut st = self.lock();
            st.dirty = false;
            UsageSnapshot::new(
                &self.shared.run_id,
                self.shared.budget,
                st.reserved,
                &st.totals,
                &st.models,
                &st.served,
            )
        };
        let result = self.write_out(dir, &snapshot);
        if result.is_err() {
            self.lock().dirty = true;
            self.count_write_error();
        }
        result
    }

    fn write_out(&self, dir: &Path, snapshot: &UsageSnapshot) -> Result<(), LedgerError> {
        let io_err = |path: PathBuf| move |source| LedgerError::Io { path, source };
        if let Some((journal, inferences)) = &self.shared.sync {
            journal
                .sync_data()
                .map_err(io_err(dir.join(JOURNAL_FILE)))?;
            inferences
                .sync_data()
                .map_err(io_err(dir.join(report::INFERENCES_FILE)))?;
        }
        snapshot
            .write_atomic(dir)
            .map_err(io_err(dir.join(report::USAGE_FILE)))
    }

    /// Flushes if anything changed since the last flush.
    pub fn flush_if_dirty(&self) -> Result<(), LedgerError> {
        if self.lock().dirty {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Starts a thread that flushes every `every` while anything changed; stop it at shutdown.
    pub fn spawn_flusher(&self, every: Duration) -> io::Result<Flusher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (ledger, signal) = (self.clone(), Arc::clone(&stop));
        let handle = std::thread::Builder::new()
            .name("ledger-flush".into())
            .spawn(move || {
                let (lock, cvar) = &*signal;
                let mut stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                while !*stopped {
                    stopped = cvar
                        .wait_timeout(stopped, every)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if let Err(e) = ledger.flush_if_dirty() {
                        tracing::warn!(error = %e, "ledger flush failed");
                    }
                }
            })?;
        Ok(Flusher {
            stop,
            handle: Some(handle),
            ledger: self.clone(),
        })
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
