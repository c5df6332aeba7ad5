//! The single writer of `proxy_decisions.jsonl`.
//!
//! A mutex'd file rather than a channel: a record is never dropped for want of queue space, and
//! each append is one `write` of one line (small, to the page cache), so the lock is held for
//! microseconds. A line whose write fails is not chained (the head stays on the last line on
//! disk, so the file still verifies), and is counted in the receipt's `write_failures` and in
//! `tollgate_evidence_write_failures_total`.
//!
//! Size: the data dir is a small volume shared with the spend ledger, and the agent decides how
//! many connections it opens, so the log stops growing at `max_bytes`; records beyond it are
//! counted (`dropped` in the receipt, `reason="size-limit"` in the metric), never written.
//!
//! Durability: no fsync per line (a process crash loses nothing, the page cache has it; a node
//! crash can lose the last lines, which the receipt then no longer matches); the file is fsynced
//! whenever a receipt is written (at shutdown).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec};

use super::chain::{self, Chain};
use super::receipt::Receipt;
use super::record::{DECISIONS_FILE, Llm, PhaseChange, PolicyVersion, RECEIPT_FILE, Record, Start};

/// Why the decision log cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file could not be read, repaired or opened for appending.
    #[error("decision log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Appends hash-chained records; shared by every connection and request.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    state: Mutex<State>,
    written: IntCounter,
    io_failed: IntCounter,
    dropped: IntCounter,
    max_bytes: u64,
}

#[derive(Debug)]
struct State {
    file: File,
    chain: Chain,
    bytes: u64,
    write_failures: u64,
    dropped: u64,
}

enum RecordKind {
    Start,
    Other,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Recorder {
    /// Opens (or creates) `<dir>/proxy_decisions.jsonl`, verifies what is there, continues its
    /// chain, and appends `start`. A broken chain on disk is logged and named in the start
    /// record; a torn last line (crash mid-write) is cut off and its size recorded.
    pub fn open(
        dir: &Path,
        mut start: Start,
        max_bytes: u64,
        written: IntCounter,
        failed: &IntCounterVec,
    ) -> Result<Self, OpenError> {
        let path = dir.join(DECISIONS_FILE);
        let io_err = |source| OpenError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let mut text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(e)),
        };
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            start.truncated_bytes = (text.len() - whole) as u64;
            text.truncate(whole);
            let file = OpenOptions::new().write(true).open(&path).map_err(io_err)?;
            file.set_len(whole as u64).map_err(io_err)?;
            tracing::warn!(path = %path.display(), bytes = start.truncated_bytes, "decision log ended in a torn line; cut off");
        }
        let text = String::from_utf8_lossy(&text);
        let mut chain = Chain::default();
        for raw in text.split_terminator('\n') {
            if start.broken_chain.is_some() {
                chain.resume_after(raw);
            } else if let Err(error) = chain.push(raw) {
                tracing::error!(path = %path.display(), %error, "the decision log on disk does not verify; continuing its chain from its last line");
                start.broken_chain = Some(error.to_string());
                chain.resume_after(raw);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err)?;
        let recorder = Self {
            dir: dir.to_owned(),
            state: Mutex::new(State {
                file,
                chain,
                bytes: text.len() as u64,
                write_failures: 0,
                dropped: 0,
            }),
            written,
            io_failed: failed.with_label_values(&["io"]),
            dropped: failed.with_label_values(&["size-limit"]),
            max_bytes,
        };
        recorder.append(Record::Start(start));
        Ok(recorder)
    }

    /// Appends one record (see the module doc for what a failed write does).
    pub fn append(&self, record: Record) {
        let record_kind = match record {
            Record::Start(_) => RecordKind::Start,
            _ => RecordKind::Other,
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let line = match state.chain.line(now_ms(), record) {
            Ok(line) => line,
            Err(error) => {
                state.write_failures += 1;
                self.io_failed.inc();
                tracing::error!(%error, "cannot serialise a decision record");
                return;
            }
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        // Start records always go in: they are few (one per process start) and bind the run.
        let start = matches!(record_kind, RecordKind::Start);
        if !start && state.bytes + bytes.len() as u64 > self.max_bytes {
            if state.dropped == 0 {
                tracing::warn!(
                    max_bytes = self.max_bytes,
                    "the decision log is full; further records are counted, not written"
                );
            }
            state.dropped += 1;
            self.dropped.inc();
            return;
        }
        if let Err(error) = state.file.write_all(&bytes) {
            state.write_failures += 1;
            self.io_failed.inc();
            tracing::error!(%error, "cannot append to the decision log; the record is lost (counted in the receipt)");
            return;
        }
        // Our own line, just serialised: it verifies unless the serialiser and parser disagree,
        // in which case the chain is continued (and the next verification will say so).
        if let Err(error) = state.chain.push(&line) {
            tracing::error!(%error, "a decision record does not read back");
            state.chain.resume_after(&line);
        }
        state.bytes += bytes.len() as u64;
        self.written.inc();
    }

    /// Records a policy version coming into force.
    pub fn policy(&self, bytes: &[u8], origin: &str) {
        self.append(Record::Policy(PolicyVersion {
            sha256: chain::sha256_hex(bytes),
            origin: origin.to_owned(),
        }));
    }

    /// Records a phase transition.
    pub fn phase(&self, from: Option<&str>, to: &str, source: &str) {
        self.append(Record::Phase(PhaseChange {
            from: from.map(str::to_owned),
            to: to.to_owned(),
            source: source.to_owned(),
        }));
    }
    /// Appends an LLM request's record.
    pub fn llm(&self, record: Llm) {
        self.append(Record::Llm(record));
    }

    /// The receipt for the chain as it stands.
    pub fn receipt(&self) -> Receipt {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Receipt::new(
            state.chain.summary().clone(),
            state.write_failures,
            state.dropped,
        )
    }

    /// Fsyncs the log and writes `run_receipt.json` beside it (atomically: temp file, fsync,
    /// rename). Returns the receipt written.
    pub fn write_receipt(&self) -> io::Result<Receipt> {
        let receipt = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.file.sync_data()?;
            Receipt::new(
                state.chain.summary().clone(),
                state.write_failures,
                state.dropped,
            )
        };
        let json = serde_json::to_vec_pretty(&receipt).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!("{RECEIPT_FILE}.tmp"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&json)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(RECEIPT_FILE))?;
        Ok(receipt)
    }
}

#[cfg(test)]
mod bench {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::evidence::record::Connection;

    /// CPU time this thread has run, ns (`/proc/thread-self/schedstat`, first field).
    fn thread_cpu_ns() -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        s.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn record(i: u64) -> Record {
        Record::Connection(Box::new(Connection {
            listener: "sni".into(),
            peer: format!("10.0.0.1:{}", i % 60000),
            orig_dst: None,
            sni: Some("files.pythonhosted.org".into()),
            encrypted: None,
            phase: "agent".into(),
            decided: Some("tunnel".into()),
            route: "tunnel".into(),
            reason: "allow-listed".into(),
            rule: Some("*.pythonhosted.org".into()),
            bytes_up: 1234 + i,
            bytes_down: 567_890,
            duration_ms: 42,
            end: "closed".into(),
            error: None,
            observed: None,
        }))
    }

    /// CPU per appended record (hash + serialise + write + fold) against the baseline of only
    /// serialising the same record: `cargo test -p tollgate --release evidence::recorder::bench
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn append_cost_against_serialising() {
        const N: u64 = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let start = Start {
            run_id: "bench".into(),
            commit: "c".into(),
            version: "v".into(),
            budget_micros: None,
            own_ports: vec![],
            broken_chain: None,
            truncated_bytes: 0,
            observe: false,
        };
        let failed = IntCounterVec::new(prometheus::Opts::new("f", "f"), &["reason"]).unwrap();
        let rec = Recorder::open(
            dir.path(),
            start,
            u64::MAX,
            IntCounter::new("w", "w").unwrap(),
            &failed,
        )
        .unwrap();
        let t0 = thread_cpu_ns();
        let mut bytes = 0;
        for i in 0..N {
            bytes += serde_json::to_string(&record(i)).unwrap().len();
        }
        let base = thread_cpu_ns() - t0;
        let t1 = thread_cpu_ns();
        for i in 0..N {
            rec.append(record(i));
        }
        let append = thread_cpu_ns() - t1;
        println!(
            "per record: serialise only {} ns, append {} ns, ratio {:.2} ({} bytes/line)",
            base / N,
            append / N,
            append as f64 / base as f64,
            bytes as u64 / N
        );
    }
}
