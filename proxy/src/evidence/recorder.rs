//! The single writer of `proxy_decisions.jsonl`.
//!
//! Callers hand records to a bounded queue; one writer thread serialises, hashes and appends
//! them, in queue order (which is the chain's order). The connection's thread therefore pays
//! for a queue push, not for JSON, SHA-256 and `write(2)` under a lock that every worker
//! contends for; and the writer appends whatever queued up meanwhile with one `write`. The
//! queue is bounded (a full queue makes the caller wait: a record is never dropped for want of
//! queue space). A batch whose write fails is not chained (the head stays on the last line on
//! disk, so the file still verifies), and its records are counted in the receipt's
//! `write_failures` and in `tollgate_evidence_write_failures_total`.
//!
//! Size: the data dir is a small volume shared with the spend ledger, and the agent decides how
//! many connections it opens, so the log stops growing at `max_bytes`; records beyond it are
//! counted (`dropped` in the receipt, `reason="size-limit"` in the metric), never written.
//!
//! Durability: no fsync per line. A clean shutdown loses nothing: the receipt is written only
//! after the queue is flushed, and the file is then fsynced. A process killed outright can lose
//! what was still queued (at most a few milliseconds of records); a node crash can lose the last
//! lines, which the receipt then no longer matches.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec};

use super::chain::{self, Chain};
use super::receipt::Receipt;
use super::record::{DECISIONS_FILE, Llm, PhaseChange, PolicyVersion, RECEIPT_FILE, Record, Start};

/// Records that may wait for the writer; beyond it, callers wait (about 2 MB of records).
const QUEUE: usize = 4096;
/// After each batch the writer lets records gather this long, so that under load one wake-up
/// and one `write` serve many connections instead of one each.
const GATHER: Duration = Duration::from_millis(10);

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
    queue: SyncSender<Message>,
    log: Arc<Log>,
}

/// What the writer thread owns (behind a mutex only so receipts can read it).
#[derive(Debug)]
struct Log {
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

#[derive(Debug)]
enum Message {
    Record(Record),
    /// Everything queued before it is on disk (or counted as failed) when this is answered.
    Flush(mpsc::Sender<()>),
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
        let log = Arc::new(Log {
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
        });
        // The start record goes in before anything can be queued behind it.
        log.write_batch(vec![Record::Start(start)]);
        let (queue, rx) = mpsc::sync_channel(QUEUE);
        let writer = log.clone();
        std::thread::Builder::new()
            .name("tollgate-evidence".into())
            .spawn(move || writer.run(&rx))
            .map_err(io_err)?;
        Ok(Self {
            dir: dir.to_owned(),
            queue,
            log,
        })
    }

    /// Queues one record (see the module doc for what a failed write does).
    pub fn append(&self, record: Record) {
        if self.queue.send(Message::Record(record)).is_err() {
            // The writer is gone (it panicked): the record is lost, and counted as such.
            let mut state = self.log.lock();
            state.write_failures += 1;
            self.log.io_failed.inc();
        }
    }

    /// Waits until every record queued so far has been written (or counted as failed).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.queue.send(Message::Flush(tx)).is_ok() {
            // An error means the writer is gone; nothing queued can be written any more.
            let _ = rx.recv();
        }
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

    /// The receipt for the chain as it stands, once what is queued has been written.
    pub fn receipt(&self) -> Receipt {
        self.flush();
        let state = self.log.lock();
        Receipt::new(
            state.chain.summary().clone(),
            state.write_failures,
            state.dropped,
        )
    }

    /// Flushes the queue, fsyncs the log and writes `run_receipt.json` beside it (atomically:
    /// temp file, fsync, rename). Returns the receipt written.
    pub fn write_receipt(&self) -> io::Result<Receipt> {
        self.flush();
        let receipt = {
            let state = self.log.lock();
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

impl Log {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: takes whatever is queued, writes it as one batch, answers flushes in
    /// order; ends when every [`Recorder`] handle is gone.
    fn run(&self, rx: &Receiver<Message>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Record(record) => batch.push(record),
                    Message::Flush(done) => {
                        self.write_batch(std::mem::take(&mut batch));
                        let _ = done.send(());
                    }
                }
                next = rx.try_recv().ok();
            }
            self.write_batch(batch);
            std::thread::sleep(GATHER);
        }
    }

    /// Serialises and chains `records` and appends them with one `write`. Records past the size
    /// bound are counted, not written (start records always go in: one per process start, and
    /// they bind the run). If the write fails, none of the batch is chained.
    fn write_batch(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let mut state = self.lock();
        let before = (state.chain.clone(), state.bytes);
        let mut bytes = Vec::new();
        let mut lines = 0u64;
        for record in records {
            let start = matches!(record, Record::Start(_));
            let line = state.chain.next_line(now_ms(), record);
            let raw = match serde_json::to_string(&line) {
                Ok(raw) => raw,
                Err(error) => {
                    state.write_failures += 1;
                    self.io_failed.inc();
                    tracing::error!(%error, "cannot serialise a decision record");
                    continue;
                }
            };
            let len = raw.len() as u64 + 1;
            if !start && state.bytes + len > self.max_bytes {
                if state.dropped == 0 {
                    tracing::warn!(
                        max_bytes = self.max_bytes,
                        "the decision log is full; further records are counted, not written"
                    );
                }
                state.dropped += 1;
                self.dropped.inc();
                continue;
            }
            state.chain.accept(&line, &raw);
            bytes.extend_from_slice(raw.as_bytes());
            bytes.push(b'\n');
            state.bytes += len;
            lines += 1;
        }
        if lines == 0 {
            return;
        }
        if let Err(error) = state.file.write_all(&bytes) {
            (state.chain, state.bytes) = before;
            state.write_failures += lines;
            self.io_failed.inc_by(lines);
            tracing::error!(%error, lines, "cannot append to the decision log; the records are lost (counted in the receipt)");
            return;
        }
        self.written.inc_by(lines);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::evidence::record::Connection;

    /// CPU time this thread has run, ns (`/proc/thread-self/schedstat`, first field).
    fn thread_cpu_ns() -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        s.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// CPU time of this process's writer threads, ns.
    fn writer_cpu_ns() -> u64 {
        let mut total = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == "tollgate-evidence" {
                let s = std::fs::read_to_string(task.path().join("schedstat")).unwrap();
                total += s.split_whitespace().next().unwrap().parse::<u64>().unwrap();
            }
        }
        total
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

    fn open(dir: &Path, max_bytes: u64) -> Recorder {
        let start = Start {
            run_id: "test".into(),
            commit: "c".into(),
            version: "v".into(),
            budget_micros: None,
            own_ports: vec![],
            broken_chain: None,
            truncated_bytes: 0,
            observe: false,
        };
        let failed = IntCounterVec::new(prometheus::Opts::new("f", "f"), &["reason"]).unwrap();
        let written = IntCounter::new("w", "w").unwrap();
        Recorder::open(dir, start, max_bytes, written, &failed).unwrap()
    }

    #[test]
    fn every_queued_record_is_chained_before_the_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(open(dir.path(), u64::MAX));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let rec = rec.clone();
                std::thread::spawn(move || (0..500).for_each(|i| rec.append(record(t * 1000 + i))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let receipt = rec.write_receipt().unwrap();
        assert_eq!(receipt.summary.records, 2001);
        assert_eq!(receipt.write_failures, 0);
        let text = std::fs::read_to_string(dir.path().join(DECISIONS_FILE)).unwrap();
        let chain = chain::verify(&text).unwrap();
        assert_eq!(chain.summary(), &receipt.summary);
        assert_eq!(chain.summary().connections.total, 2000);
        assert!(dir.path().join(RECEIPT_FILE).exists());
    }

    #[test]
    fn records_past_the_size_bound_are_counted_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let rec = open(dir.path(), 4096);
        (0..100).for_each(|i| rec.append(record(i)));
        let receipt = rec.receipt();
        let text = std::fs::read_to_string(dir.path().join(DECISIONS_FILE)).unwrap();
        assert!(text.len() <= 4096);
        let written = chain::verify(&text).unwrap().summary().records;
        assert_eq!(written, receipt.summary.records);
        assert_eq!(written - 1 + receipt.dropped, 100);
        assert!(receipt.dropped > 0);
    }

    /// CPU per appended record on the caller's thread and on the writer's, against only
    /// serialising the same record: `cargo test -p tollgate --release evidence::recorder::tests
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn append_cost_against_serialising() {
        const N: u64 = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let rec = open(dir.path(), u64::MAX);
        let t0 = thread_cpu_ns();
        let mut bytes = 0;
        for i in 0..N {
            bytes += serde_json::to_string(&record(i)).unwrap().len();
        }
        let base = thread_cpu_ns() - t0;
        let (t1, w1) = (thread_cpu_ns(), writer_cpu_ns());
        for i in 0..N {
            rec.append(record(i));
        }
        rec.flush();
        let (caller, writer) = (thread_cpu_ns() - t1, writer_cpu_ns() - w1);
        println!(
            "per record: serialise only {} ns; append: caller {} ns, writer {} ns ({} bytes/line)",
            base / N,
            caller / N,
            writer / N,
            bytes as u64 / N
        );
    }
}
