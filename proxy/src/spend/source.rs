//! Where a settled amount came from: a word the journal, the ledger, the inference log and the
//! spend metrics all use, so it lives in a leaf module that imports none of them.

use serde::{Deserialize, Serialize};

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
    /// Nothing was charged: the request never reached the upstream (connect failure), or the
    /// upstream refused it with a 4xx before generating anything.
    NotGenerated,
}

impl SettlementSource {
    /// The source as a log field and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementSource::Usage => "usage",
            SettlementSource::Generation => "generation",
            SettlementSource::WorstCase => "worst-case",
            SettlementSource::NotGenerated => "not-generated",
        }
    }
}
