//! The hash chain over `proxy_decisions.jsonl` and the fold that sums it up.
//!
//! Each line's `prev` is the SHA-256 of the previous line's bytes (newline excluded); the first
//! line's is [`genesis`] of its run id, so a chain cannot be passed off as another run's. The head
//! is the hash of the last line. Editing a line changes its hash (the next `prev` no longer
//! matches; the last line's change shows against the receipt's head); dropping or reordering
//! lines breaks `seq` and `prev`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::record::{self, Line, Record};

/// Domain separation for the genesis hash (bump with the line format).
const GENESIS_TAG: &str = "tollgate-decisions-v1";

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    // By table: formatting each byte through `format!` was a visible share of a record's cost.
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// The first line's `prev`: binds the chain to its run id.
pub fn genesis(run_id: &str) -> String {
    sha256_hex(format!("{GENESIS_TAG}\n{run_id}").as_bytes())
}

/// Why a chain does not verify; `line` is 1-based, as an editor shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Not a decision record.
    #[error("line {line}: not a decision record: {error}")]
    Parse {
        /// The line.
        line: u64,
        /// The parser's message.
        error: String,
    },
    /// The first line must be a start record.
    #[error("line 1: the first record is not a start record (the beginning was dropped?)")]
    NoStart,
    /// The position does not follow the line before.
    #[error(
        "line {line}: seq is {found}, expected {expected}: a line before it was dropped or moved"
    )]
    Seq {
        /// The line.
        line: u64,
        /// The seq expected.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// `prev` is not the hash of the line before.
    #[error(
        "line {line}: prev does not match the hash of line {before}: line {before} was edited, or a \
         line was dropped or moved here"
    )]
    Prev {
        /// The line.
        line: u64,
        /// The line before it.
        before: u64,
    },
    /// The first line's `prev` is not the genesis of its run id.
    #[error("line 1: prev is not the genesis hash of run id {run_id:?}")]
    Genesis {
        /// The run id it names.
        run_id: String,
    },
}

/// Connection counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionTotals {
    /// All connections.
    pub total: u64,
    /// By final route.
    pub by_route: BTreeMap<String, u64>,
    /// By final reason.
    pub by_reason: BTreeMap<String, u64>,
}

/// One model's LLM totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelTotals {
    /// Requests.
    pub requests: u64,
    /// Charged, micro-USD.
    pub charged_micros: u64,
}

/// LLM totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmTotals {
    /// All requests.
    pub requests: u64,
    /// Requests refused by the gateway.
    pub refused: u64,
    /// By requested model (`-` when the request named none).
    pub by_model: BTreeMap<String, ModelTotals>,
    /// Forwarded requests by the model that served them (`unknown` when nothing named one).
    #[serde(default)]
    pub by_served_model: BTreeMap<String, ModelTotals>,
    /// The budget at the last start, micro-USD (`None`: none configured).
    pub budget_micros: Option<u64>,
    /// Charged in total, micro-USD.
    pub spent_micros: u64,
    /// Charged beyond reservations in total, micro-USD.
    pub overcharge_micros: u64,
    /// Requests with an overcharge.
    pub overcharges: u64,
    /// Served-model/provider violations by kind.
    pub violations: BTreeMap<String, u64>,
}

/// A process start, as the receipt lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartEntry {
    /// Its line's seq.
    pub seq: u64,
    /// When.
    pub ts_ms: u64,
    /// Build commit.
    pub commit: String,
    /// Version.
    pub version: String,
    /// Why the chain on disk did not verify at this start, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_chain: Option<String>,
    /// Whether the agent phase ran in observe mode.
    pub observe: bool,
}

/// A policy version and when it came into force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// Its line's seq.
    pub seq: u64,
    /// When.
    pub ts_ms: u64,
    /// SHA-256 of the policy bytes.
    pub sha256: String,
    /// Its origin.
    pub origin: String,
}

/// A phase transition, as the receipt lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseEntry {
    /// Its line's seq.
    pub seq: u64,
    /// When.
    pub ts_ms: u64,
    /// Before (`None` at start).
    pub from: Option<String>,
    /// After.
    pub to: String,
    /// Source.
    pub source: String,
}

/// Everything the receipt states about a chain, recomputable from the chain alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The run id of the first start record (the genesis binds it).
    pub run_id: String,
    /// Genesis hash.
    pub genesis: String,
    /// Hash of the last line.
    pub head: String,
    /// Lines in the chain.
    pub records: u64,
    /// Process starts.
    pub starts: Vec<StartEntry>,
    /// Policy versions in force, in order.
    pub policies: Vec<PolicyEntry>,
    /// Phase transitions, in order.
    pub phases: Vec<PhaseEntry>,
    /// Connection counts.
    pub connections: ConnectionTotals,
    /// Every policy pattern that decided a connection.
    pub host_patterns: BTreeSet<String>,
    /// LLM totals.
    pub llm: LlmTotals,
    /// Observed DNS queries (observe mode) by the agent-phase outcome.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dns_observed: BTreeMap<String, u64>,
}

/// The chain's state: the next expected seq and prev, and the summary so far.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    summary: Summary,
}

impl Chain {
    /// The summary of the lines accepted so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The next line's seq.
    pub fn next_seq(&self) -> u64 {
        self.summary.records
    }

    /// The `prev` the next line must carry; `None` before the first line (its genesis depends on
    /// its run id).
    pub fn head(&self) -> Option<&str> {
        (self.summary.records > 0).then_some(self.summary.head.as_str())
    }

    /// The next line for `record`, not yet serialised nor accepted (the writer's path: it
    /// serialises it, and [`Chain::accept`]s it once the bytes are written).
    pub fn next_line(&self, ts_ms: u64, record: Record) -> Line {
        let prev = match (self.head(), &record) {
            (Some(head), _) => head.to_owned(),
            (None, Record::Start(start)) => genesis(&start.run_id),
            (None, _) => String::new(),
        };
        Line {
            seq: self.next_seq(),
            ts_ms,
            record,
            prev,
        }
    }

    /// Folds `line`, which this chain made with [`Chain::next_line`] and which was serialised
    /// as `raw`, without reading `raw` back (parsing every line again cost more than hashing it).
    pub fn accept(&mut self, line: &Line, raw: &str) {
        self.fold(line);
        self.summary.head = sha256_hex(raw.as_bytes());
        self.summary.records += 1;
    }

    /// Checks `raw` (one line, no newline) against the chain and folds it into the summary.
    pub fn push(&mut self, raw: &str) -> Result<(), ChainError> {
        let number = self.summary.records + 1;
        let line = record::parse(raw).map_err(|e| ChainError::Parse {
            line: number,
            error: e.to_string(),
        })?;
        match self.head() {
            None => {
                let Record::Start(start) = &line.record else {
                    return Err(ChainError::NoStart);
                };
                if line.prev != genesis(&start.run_id) {
                    return Err(ChainError::Genesis {
                        run_id: start.run_id.clone(),
                    });
                }
            }
            Some(head) => {
                if line.seq != self.next_seq() {
                    return Err(ChainError::Seq {
                        line: number,
                        expected: self.next_seq(),
                        found: line.seq,
                    });
                }
                if line.prev != head {
                    return Err(ChainError::Prev {
                        line: number,
                        before: number - 1,
                    });
                }
            }
        }
        if line.seq != self.next_seq() {
            return Err(ChainError::Seq {
                line: number,
                expected: self.next_seq(),
                found: line.seq,
            });
        }
        self.fold(&line);
        self.summary.head = sha256_hex(raw.as_bytes());
        self.summary.records += 1;
        Ok(())
    }

    /// Continues after a line that did not verify (restart over a broken file): the chain goes
    /// on from that line's hash, and the summary stops counting what it cannot trust.
    pub fn resume_after(&mut self, raw: &str) {
        self.summary.head = sha256_hex(raw.as_bytes());
        self.summary.records += 1;
    }

    fn fold(&mut self, line: &Line) {
        let s = &mut self.summary;
        match &line.record {
            Record::Start(start) => {
                if s.starts.is_empty() {
                    s.run_id = start.run_id.clone();
                    s.genesis = genesis(&start.run_id);
                }
                s.llm.budget_micros = start.budget_micros;
                s.starts.push(StartEntry {
                    seq: line.seq,
                    ts_ms: line.ts_ms,
                    commit: start.commit.clone(),
                    version: start.version.clone(),
                    broken_chain: start.broken_chain.clone(),
                    observe: start.observe,
                });
            }
            Record::Policy(p) => s.policies.push(PolicyEntry {
                seq: line.seq,
                ts_ms: line.ts_ms,
                sha256: p.sha256.clone(),
                origin: p.origin.clone(),
            }),
            Record::Phase(p) => s.phases.push(PhaseEntry {
                seq: line.seq,
                ts_ms: line.ts_ms,
                from: p.from.clone(),
                to: p.to.clone(),
                source: p.source.clone(),
            }),
            Record::Connection(c) => {
                let totals = &mut s.connections;
                totals.total += 1;
                *totals.by_route.entry(c.route.clone()).or_default() += 1;
                *totals.by_reason.entry(c.reason.clone()).or_default() += 1;
                if let Some(rule) = &c.rule {
                    s.host_patterns.insert(rule.clone());
                }
            }
            Record::Dns(d) => *s.dns_observed.entry(d.observed.clone()).or_default() += 1,
            Record::Llm(r) => {
                let llm = &mut s.llm;
                llm.requests += 1;
                if r.reason != "forwarded" {
                    llm.refused += 1;
                }
                let model = r.model.clone().unwrap_or_else(|| "-".to_owned());
                let per = llm.by_model.entry(model).or_default();
                per.requests += 1;
                per.charged_micros = per.charged_micros.saturating_add(r.charged_micros);
                llm.spent_micros = llm.spent_micros.saturating_add(r.charged_micros);
                if r.reason == "forwarded" {
                    let served = r
                        .served_model
                        .clone()
                        .unwrap_or_else(|| "unknown".to_owned());
                    let per = llm.by_served_model.entry(served).or_default();
                    per.requests += 1;
                    per.charged_micros = per.charged_micros.saturating_add(r.charged_micros);
                }
                if r.overcharge_micros > 0 {
                    llm.overcharges += 1;
                    llm.overcharge_micros =
                        llm.overcharge_micros.saturating_add(r.overcharge_micros);
                }
                if let Some(kind) = &r.violation {
                    *llm.violations.entry(kind.clone()).or_default() += 1;
                }
            }
        }
    }
}

/// Verifies a whole file's text; every line must end with a newline.
pub fn verify(text: &str) -> Result<Chain, ChainError> {
    let mut chain = Chain::default();
    for raw in text.split_terminator('\n') {
        chain.push(raw)?;
    }
    Ok(chain)
}

#[cfg(test)]
mod tests;
