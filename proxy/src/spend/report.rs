//! The reference-compatible files: `proxy_usage.json` (a snapshot, replaced atomically) and
//! `proxy_inferences.jsonl` (one line per settled or refused request).
//!
//! USD values are JSON numbers (f64) for compatibility, rendered from micro-USD at the edge.
//! `budget_remaining_usd` is what new requests may still reserve: budget − settled − reserved,
//! floored at 0 (the same as the reference's budget − spent whenever nothing is in flight).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::journal::ModelTotals;
use super::money::Micros;

/// The usage snapshot file name.
pub const USAGE_FILE: &str = "proxy_usage.json";
/// The per-request log file name.
pub const INFERENCES_FILE: &str = "proxy_inferences.jsonl";

/// Per-model usage, as in `proxy_usage.json`'s `models` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelUsage {
    /// Settled requests.
    pub requests: u64,
    /// Settled spend in USD.
    pub cost_usd: f64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl From<&ModelTotals> for ModelUsage {
    fn from(t: &ModelTotals) -> Self {
        Self {
            requests: t.requests,
            cost_usd: t.cost.as_usd_f64(),
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
        }
    }
}

/// `proxy_usage.json` and the body of `GET /api/v1/usage`: exactly these fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSnapshot {
    /// The evaluation run id.
    pub evaluation_run_id: String,
    /// Settled spend in USD.
    pub total_cost_usd: f64,
    /// The budget in USD.
    pub max_cost_usd: f64,
    /// What new requests may still reserve, in USD.
    pub budget_remaining_usd: f64,
    /// Settled requests.
    pub requests: u64,
    /// Prompt tokens, all models.
    pub prompt_tokens: u64,
    /// Completion tokens, all models.
    pub completion_tokens: u64,
    /// Usage by requested model.
    pub models: BTreeMap<String, ModelUsage>,
    /// Reserved for requests in flight, in USD.
    pub reserved_usd: f64,
    /// Usage by the model that served it (`unknown` when no response or generation record
    /// named one). Absent from snapshots written before it existed.
    #[serde(default)]
    pub served_models: BTreeMap<String, ModelUsage>,
}

impl UsageSnapshot {
    /// Builds the snapshot from integer totals.
    pub fn new(
        run: &str,
        budget: Micros,
        reserved: Micros,
        totals: &ModelTotals,
        models: &BTreeMap<String, ModelTotals>,
        served: &BTreeMap<String, ModelTotals>,
    ) -> Self {
        Self {
            evaluation_run_id: run.to_owned(),
            total_cost_usd: totals.cost.as_usd_f64(),
            max_cost_usd: budget.as_usd_f64(),
            budget_remaining_usd: budget
                .saturating_sub(totals.cost.saturating_add(reserved))
                .as_usd_f64(),
            requests: totals.requests,
            prompt_tokens: totals.prompt_tokens,
            completion_tokens: totals.completion_tokens,
            models: models.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
            reserved_usd: reserved.as_usd_f64(),
            served_models: served.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
        }
    }

    /// Writes the snapshot to `<dir>/proxy_usage.json` atomically (temp file, fsync, rename).
    pub fn write_atomic(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(format!("{USAGE_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        f.sync_data()?;
        fs::rename(&tmp, dir.join(USAGE_FILE))
    }
}

/// One line of `proxy_inferences.jsonl`: the reference's fields in its order, plus
/// `settlement_source` (`usage`, `generation`, `worst-case`; null for a refusal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceLine {
    /// The endpoint (the reference wrote `chat` and `embedding`).
    pub endpoint: String,
    /// The requested model.
    pub model: String,
    /// The status returned to the agent (0 when unknown, e.g. recovered after a crash).
    pub status_code: u16,
    /// Settled spend after this request, in USD.
    pub total_cost_usd: f64,
    /// What new requests may still reserve after this request, in USD.
    pub budget_remaining_usd: f64,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-01-01T00:00:00.000Z`.
    pub timestamp: String,
    /// The model that actually served the request.
    pub routed_model: Option<String>,
    /// The provider that served it.
    pub provider: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// What this request was charged, in USD.
    pub cost_usd: Option<f64>,
    /// Time from reservation to settlement (or as the gateway measured it).
    pub latency_ms: Option<u64>,
    /// The upstream generation id.
    pub generation_id: Option<String>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// Where the charged amount came from.
    pub settlement_source: Option<String>,
    /// The model that served the request (the same as `routed_model`, under the name the
    /// served-model checks use).
    #[serde(default)]
    pub served_model: Option<String>,
    /// The provider that served it (the same as `provider`).
    #[serde(default)]
    pub served_provider: Option<String>,
    /// The served-model check it broke, if any: `model` or `provider`.
    #[serde(default)]
    pub served_violation: Option<String>,
}

/// RFC 3339 UTC with milliseconds, as the reference wrote timestamps.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Opens `<dir>/proxy_inferences.jsonl` for appending; if a previous process left a partial
/// last line, a newline is added first so the next record starts on its own line.
pub fn open_inferences(dir: &Path) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(dir.join(INFERENCES_FILE))?;
    let len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    Ok(f)
}

/// Appends one line with a single write (best effort: the journal, not this log, is the truth).
pub fn append_line(f: &File, line: &InferenceLine) -> io::Result<()> {
    let mut buf = serde_json::to_vec(line).map_err(io::Error::other)?;
    buf.push(b'\n');
    let mut w = f;
    let n = w.write(&buf)?;
    if n != buf.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn usage_snapshot_has_the_reference_fields_and_served_models() {
        let totals = ModelTotals {
            requests: 2,
            cost: Micros(1_500),
            prompt_tokens: 10,
            completion_tokens: 20,
        };
        let models = BTreeMap::from([("openai/gpt-4o".to_owned(), totals)]);
        let served = BTreeMap::from([("openai/gpt-4o-2024-08-06".to_owned(), totals)]);
        let s = UsageSnapshot::new(
            "run-1",
            Micros(10_000),
            Micros(500),
            &totals,
            &models,
            &served,
        );
        let v = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "evaluation_run_id",
            "total_cost_usd",
            "max_cost_usd",
            "budget_remaining_usd",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "models",
            "reserved_usd",
            "served_models",
        ];
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected);
        assert_eq!(v["total_cost_usd"], 0.0015);
        assert_eq!(v["max_cost_usd"], 0.01);
        assert_eq!(v["budget_remaining_usd"], 0.008);
        assert_eq!(v["reserved_usd"], 0.0005);
        assert_eq!(
            v["models"]["openai/gpt-4o"],
            serde_json::json!({"requests":2,"cost_usd":0.0015,"prompt_tokens":10,"completion_tokens":20})
        );
        assert_eq!(
            v["served_models"]["openai/gpt-4o-2024-08-06"],
            v["models"]["openai/gpt-4o"]
        );
    }

    #[test]
    fn usage_file_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = UsageSnapshot::new(
            "r",
            Micros(1),
            Micros(0),
            &ModelTotals::default(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        s.write_atomic(dir.path()).unwrap();
        s.write_atomic(dir.path()).unwrap();
        let back: UsageSnapshot =
            serde_json::from_slice(&fs::read(dir.path().join(USAGE_FILE)).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(!dir.path().join(format!("{USAGE_FILE}.tmp")).exists());
    }

    #[test]
    fn inference_lines_repair_a_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(INFERENCES_FILE), b"{\"endpoint\":\"ch").unwrap();
        let f = open_inferences(dir.path()).unwrap();
        let line = InferenceLine {
            endpoint: "chat".into(),
            model: "m".into(),
            status_code: 200,
            total_cost_usd: 0.5,
            budget_remaining_usd: 1.5,
            timestamp: timestamp(SystemTime::UNIX_EPOCH),
            routed_model: None,
            provider: None,
            prompt_tokens: Some(1),
            completion_tokens: None,
            cost_usd: Some(0.5),
            latency_ms: Some(3),
            generation_id: None,
            error: None,
            settlement_source: Some("usage".into()),
            served_model: None,
            served_provider: None,
            served_violation: None,
        };
        append_line(&f, &line).unwrap();
        let text = fs::read_to_string(dir.path().join(INFERENCES_FILE)).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(serde_json::from_str::<InferenceLine>(last).unwrap(), line);
        assert!(last.starts_with("{\"endpoint\":\"chat\",\"model\":\"m\",\"status_code\":200,"));
        assert!(last.contains("\"timestamp\":\"1970-01-01T00:00:00.000Z\""));
    }
}
