//! The append-only ledger journal (`<data_dir>/proxy_ledger.jsonl`), the durable truth of spend.
//!
//! One JSON object per line, each written with a single `write(2)` (O_APPEND) *before* the
//! reservation it records is granted or the settlement it records is acknowledged. A write that
//! returned sits in the page cache and survives a kill -9 of the process; fsync (in the
//! background and at shutdown) covers a machine crash. Records:
//!
//! ```text
//! {"t":"open","v":1,"run":"eval-1","budget":5000000,"ts":"2026-01-01T00:00:00.000Z"}
//! {"t":"reserve","id":7,"micros":1234,"model":"openai/gpt-4o","endpoint":"chat"}
//! {"t":"settle","id":7,"micros":1000,"source":"usage","model":"openai/gpt-4o","prompt_tokens":10,"completion_tokens":20}
//! ```
//!
//! Replay rules: settled spend is the sum of `settle` micros (each id counted once); a `reserve`
//! without a `settle` is a reservation a crash left open — the caller settles it at its worst
//! case. A last line without its newline is a torn write (its reservation was never granted, its
//! settlement never acknowledged): it is dropped and the file truncated to the last full line.
//! Any other unreadable line is corruption and refuses the start (fail closed: it could have
//! been a reservation whose spend would otherwise be lost).

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::money::Micros;
use super::source::SettlementSource;

/// The journal format version written in `open` records.
pub const VERSION: u32 = 1;

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// The ledger was opened (diagnostics: which run, which budget).
    Open {
        /// Format version.
        v: u32,
        /// The evaluation run id.
        run: String,
        /// The budget at open, in micro-USD.
        budget: Micros,
        /// When, RFC 3339 UTC.
        ts: String,
    },
    /// A reservation was granted.
    Reserve {
        /// Reservation id, unique within the journal.
        id: u64,
        /// The worst case reserved.
        micros: Micros,
        /// The requested model.
        model: String,
        /// The endpoint.
        endpoint: String,
    },
    /// A reservation was settled at `micros`.
    Settle {
        /// The reservation settled.
        id: u64,
        /// The amount charged.
        micros: Micros,
        /// What the amount came from.
        source: SettlementSource,
        /// The requested model.
        model: String,
        /// Prompt tokens, as reported.
        #[serde(default)]
        prompt_tokens: u64,
        /// Completion tokens, as reported.
        #[serde(default)]
        completion_tokens: u64,
        /// The model that served it, when the response named one (older journals lack it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        served: Option<String>,
    },
}

/// The served-model key of a settlement no response named a model for.
pub const UNKNOWN_SERVED: &str = "unknown";

/// Why the journal could not be opened or replayed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("ledger journal {path}: {source}")]
    Io {
        /// The journal path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process holds the journal.
    #[error("ledger journal {0} is locked by another process")]
    Locked(PathBuf),
    /// A line other than a torn last line is unreadable.
    #[error("ledger journal {path} line {line}: unreadable record ({why}); refusing to start")]
    Corrupt {
        /// The journal path.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        why: String,
    },
}

/// A reservation the journal shows as never settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReservation {
    /// The worst case it reserved.
    pub micros: Micros,
    /// The requested model.
    pub model: String,
    /// The endpoint.
    pub endpoint: String,
}

/// Per-model totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelTotals {
    /// Settled requests.
    pub requests: u64,
    /// Settled spend.
    pub cost: Micros,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// What a journal replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Totals of every settlement, overall and by model.
    pub totals: ModelTotals,
    /// Totals by requested model.
    pub models: BTreeMap<String, ModelTotals>,
    /// Totals by served model ([`UNKNOWN_SERVED`] when no response named one).
    pub served: BTreeMap<String, ModelTotals>,
    /// Reservations left open, by id.
    pub open: BTreeMap<u64, OpenReservation>,
    /// The next unused reservation id.
    pub next_id: u64,
    /// Whether a torn last line was dropped.
    pub torn_tail: bool,
}

impl ModelTotals {
    /// Adds one settled request.
    pub fn add(&mut self, micros: Micros, prompt: u64, completion: u64) {
        self.requests += 1;
        self.cost = self.cost.saturating_add(micros);
        self.prompt_tokens = self.prompt_tokens.saturating_add(prompt);
        self.completion_tokens = self.completion_tokens.saturating_add(completion);
    }
}

/// The open journal: an exclusively locked, append-only file.
pub struct Journal {
    file: Flock<File>,
    path: PathBuf,
    len: u64,
}

impl Journal {
    /// Opens (creating) and locks the journal at `path` and replays it.
    pub fn open(path: &Path) -> Result<(Journal, Replay), JournalError> {
        let io_err = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(JournalError::Locked(path.to_owned()));
            }
            Err((_, e)) => return Err(io_err(io::Error::from(e))),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let (replay, good_len) = replay(path, &bytes)?;
        if good_len < bytes.len() {
            file.set_len(good_len as u64).map_err(io_err)?;
        }
        let journal = Journal {
            file,
            path: path.to_owned(),
            len: good_len as u64,
        };
        Ok((journal, replay))
    }

    /// Appends one record with a single `write(2)`; a short or failed write is cut back off the
    /// file so the next record starts on a clean line.
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        match (&*self.file).write(&line) {
            Ok(n) if n == line.len() => {
                self.len += n as u64;
                Ok(())
            }
            Ok(n) => {
                let _ = self.file.set_len(self.len);
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {} bytes", line.len()),
                ))
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// A second handle on the file, for fsync without holding the ledger lock.
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// The journal path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Replays journal bytes; returns the replay and the length of the well-formed prefix.
pub fn replay(path: &Path, bytes: &[u8]) -> Result<(Replay, usize), JournalError> {
    let mut out = Replay::default();
    let good_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    out.torn_tail = good_len < bytes.len();
    let mut settled_ids = HashSet::new();
    for (i, line) in bytes[..good_len].split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: Record = serde_json::from_slice(line).map_err(|e| JournalError::Corrupt {
            path: path.to_owned(),
            line: i + 1,
            why: e.to_string(),
        })?;
        match record {
            Record::Open { .. } => {}
            Record::Reserve {
                id,
                micros,
                model,
                endpoint,
            } => {
                out.next_id = out.next_id.max(id.saturating_add(1));
                if !settled_ids.contains(&id) {
                    out.open.insert(
                        id,
                        OpenReservation {
                            micros,
                            model,
                            endpoint,
                        },
                    );
                }
            }
            Record::Settle {
                id,
                micros,
                model,
                prompt_tokens,
                completion_tokens,
                served,
                ..
            } => {
                out.next_id = out.next_id.max(id.saturating_add(1));
                // Each id settles once; a repeat (never written by tollgate) is not counted twice.
                if settled_ids.insert(id) {
                    out.open.remove(&id);
                    out.totals.add(micros, prompt_tokens, completion_tokens);
                    out.models.entry(model).or_default().add(
                        micros,
                        prompt_tokens,
                        completion_tokens,
                    );
                    let served = served.unwrap_or_else(|| UNKNOWN_SERVED.to_owned());
                    out.served.entry(served).or_default().add(
                        micros,
                        prompt_tokens,
                        completion_tokens,
                    );
                }
            }
        }
    }
    Ok((out, good_len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn lines(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend(serde_json::to_vec(r).unwrap());
            out.push(b'\n');
        }
        out
    }

    fn reserve(id: u64, micros: u64) -> Record {
        Record::Reserve {
            id,
            micros: Micros(micros),
            model: "m".into(),
            endpoint: "chat".into(),
        }
    }

    fn settle(id: u64, micros: u64) -> Record {
        Record::Settle {
            id,
            micros: Micros(micros),
            source: SettlementSource::Usage,
            model: "m".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            served: None,
        }
    }

    #[test]
    fn record_format_is_stable() {
        let s = String::from_utf8(lines(&[reserve(7, 1234), settle(7, 1000)])).unwrap();
        assert_eq!(
            s,
            "{\"t\":\"reserve\",\"id\":7,\"micros\":1234,\"model\":\"m\",\"endpoint\":\"chat\"}\n\
             {\"t\":\"settle\",\"id\":7,\"micros\":1000,\"source\":\"usage\",\"model\":\"m\",\"prompt_tokens\":1,\"completion_tokens\":2}\n"
        );
    }

    #[test]
    fn replays_settled_and_open_reservations() {
        let bytes = lines(&[
            reserve(0, 100),
            reserve(1, 200),
            settle(0, 50),
            reserve(5, 300),
            settle(1, 250),
        ]);
        let (r, len) = replay(Path::new("j"), &bytes).unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(r.totals.cost, Micros(300));
        assert_eq!(r.totals.requests, 2);
        assert_eq!(r.models["m"].prompt_tokens, 2);
        assert_eq!(r.open.keys().copied().collect::<Vec<_>>(), vec![5]);
        assert_eq!(r.next_id, 6);
        assert!(!r.torn_tail);
    }

    #[test]
    fn served_models_survive_a_replay() {
        let mut served = settle(1, 70);
        if let Record::Settle { served: s, .. } = &mut served {
            *s = Some("openai/gpt-4o-2024-08-06".into());
        }
        let bytes = lines(&[reserve(0, 100), settle(0, 50), reserve(1, 100), served]);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(r#""served":"openai/gpt-4o-2024-08-06""#),
            "{text}"
        );
        let (r, _) = replay(Path::new("j"), &bytes).unwrap();
        assert_eq!(r.models["m"].cost, Micros(120));
        assert_eq!(
            r.served[UNKNOWN_SERVED].cost,
            Micros(50),
            "older lines lack it"
        );
        assert_eq!(r.served["openai/gpt-4o-2024-08-06"].cost, Micros(70));
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let mut bytes = lines(&[reserve(0, 100), settle(0, 40), reserve(1, 500)]);
        let full = bytes.len();
        let torn = lines(&[settle(1, 90)]);
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        let (r, len) = replay(Path::new("j"), &bytes).unwrap();
        assert_eq!(len, full);
        assert!(r.torn_tail);
        assert_eq!(r.totals.cost, Micros(40));
        assert_eq!(r.open[&1].micros, Micros(500));
    }

    #[test]
    fn a_corrupt_middle_line_refuses_to_start() {
        let mut bytes = lines(&[reserve(0, 100)]);
        bytes.extend_from_slice(b"{\"t\":\"reserve\",\"id\":1,\"mic\n");
        bytes.extend(lines(&[settle(0, 10)]));
        let err = replay(Path::new("j"), &bytes).unwrap_err();
        assert!(
            matches!(err, JournalError::Corrupt { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn duplicate_settlements_count_once() {
        let bytes = lines(&[reserve(0, 100), settle(0, 60), settle(0, 60)]);
        let (r, _) = replay(Path::new("j"), &bytes).unwrap();
        assert_eq!(r.totals.cost, Micros(60));
    }

    #[test]
    fn open_truncates_a_torn_tail_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut bytes = lines(&[reserve(0, 100)]);
        bytes.extend_from_slice(b"{\"t\":\"set");
        std::fs::write(&path, &bytes).unwrap();
        let (mut j, r) = Journal::open(&path).unwrap();
        assert!(r.torn_tail);
        assert!(matches!(Journal::open(&path), Err(JournalError::Locked(_))));
        j.append(&settle(0, 70)).unwrap();
        drop(j);
        let (_, r) = Journal::open(&path).unwrap();
        assert!(!r.torn_tail);
        assert_eq!(r.totals.cost, Micros(70));
        assert!(r.open.is_empty());
    }
}
