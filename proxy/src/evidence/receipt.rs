//! `run_receipt.json`: the chain's summary and head, and its offline verification
//! (`tollgate verify-receipt DIR`), which recomputes the summary from the log and compares.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::chain::{self, ChainError, Summary};
use super::record::{DECISIONS_FILE, RECEIPT_FILE};
use super::recorder::now_ms;

/// The receipt's format version.
pub const FORMAT: u32 = 1;

/// What `run_receipt.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Format version.
    pub format: u32,
    /// When it was generated, Unix milliseconds.
    pub generated_at_ms: u64,
    /// The commit of the binary that wrote it.
    pub commit: String,
    /// Records that could not be written to the log (each logged and counted); non-zero means
    /// the log is incomplete though the chain verifies.
    pub write_failures: u64,
    /// Records not written because the log reached its size bound; non-zero means the log is
    /// incomplete though the chain verifies.
    pub dropped: u64,
    /// Everything recomputable from the log.
    #[serde(flatten)]
    pub summary: Summary,
}

impl Receipt {
    /// A receipt for `summary`, now.
    pub fn new(summary: Summary, write_failures: u64, dropped: u64) -> Self {
        Self {
            format: FORMAT,
            generated_at_ms: now_ms(),
            commit: crate::COMMIT.to_owned(),
            write_failures,
            dropped,
            summary,
        }
    }
}

/// Why a data dir does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{file}: {error}")]
    Read {
        /// The file.
        file: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The receipt is not a receipt.
    #[error("{RECEIPT_FILE}: not a receipt: {0}")]
    Receipt(serde_json::Error),
    /// The log's chain is broken.
    #[error("{DECISIONS_FILE} {0}")]
    Chain(#[from] ChainError),
    /// The log has more or fewer lines than the receipt covers.
    #[error(
        "{DECISIONS_FILE} has {log} records, the receipt covers {receipt}: lines were dropped \
         from the end, or appended after the receipt"
    )]
    Count {
        /// Lines in the log.
        log: u64,
        /// Records in the receipt.
        receipt: u64,
    },
    /// Same length, different head: the last line was edited.
    #[error(
        "{DECISIONS_FILE} line {line} (the last) does not hash to the receipt's head: it was edited"
    )]
    Head {
        /// The last line.
        line: u64,
    },
    /// A field of the receipt does not match the log.
    #[error(
        "{RECEIPT_FILE}: `{field}` does not match {DECISIONS_FILE} (receipt: {receipt}, log: {log})"
    )]
    Field {
        /// The top-level field.
        field: String,
        /// The receipt's value.
        receipt: String,
        /// The value recomputed from the log.
        log: String,
    },
}

/// Verifies `dir`'s decision log against its receipt; returns the receipt on success.
pub fn verify_dir(dir: &Path) -> Result<Receipt, VerifyError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|error| VerifyError::Read {
            file: dir.join(name).display().to_string(),
            error,
        })
    };
    let receipt: Receipt =
        serde_json::from_slice(&read(RECEIPT_FILE)?).map_err(VerifyError::Receipt)?;
    let log = read(DECISIONS_FILE)?;
    let text = String::from_utf8_lossy(&log);
    let chain = chain::verify(&text)?;
    let summary = chain.summary();
    if summary.records != receipt.summary.records {
        return Err(VerifyError::Count {
            log: summary.records,
            receipt: receipt.summary.records,
        });
    }
    if summary.head != receipt.summary.head {
        return Err(VerifyError::Head {
            line: summary.records,
        });
    }
    compare(&receipt.summary, summary)?;
    Ok(receipt)
}

/// Names the first top-level field where the receipt and the recomputed summary differ.
fn compare(receipt: &Summary, log: &Summary) -> Result<(), VerifyError> {
    let (Ok(serde_json::Value::Object(r)), Ok(serde_json::Value::Object(l))) =
        (serde_json::to_value(receipt), serde_json::to_value(log))
    else {
        // Both are plain structs of maps, strings and numbers: they always serialise.
        return Ok(());
    };
    for (field, lv) in &l {
        let rv = r.get(field).unwrap_or(&serde_json::Value::Null);
        if rv != lv {
            return Err(VerifyError::Field {
                field: field.clone(),
                receipt: short(rv),
                log: short(lv),
            });
        }
    }
    Ok(())
}

fn short(v: &serde_json::Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
