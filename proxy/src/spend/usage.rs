//! What an upstream response says it cost: `usage`, `id`, `model`, `provider` and `error` from a
//! JSON body (or one SSE event), and the cost from a `GET /api/v1/generation` lookup.
//!
//! Parsing is lenient (a field of an unexpected type is treated as absent; it never fails the
//! response) and the cost is exact: the JSON number's literal text, as the upstream wrote it
//! (never an f64), is read by `tollgate_policy::money` and rounded *up* to the micro-USD (to the
//! nearest, a bill of 0.4 µUSD would be free and a thousand of them too). For a BYOK request
//! (`is_byok: true`) the spend is OpenRouter's fee (`cost`) plus
//! what the provider charged the key (`cost_details.upstream_inference_cost`): both are money
//! the run spent.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::money::{Micros, Rounding};

/// Token counts and cost from a `usage` object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// `prompt_tokens` (or `input_tokens`).
    pub prompt_tokens: Option<u64>,
    /// `completion_tokens` (or `output_tokens`).
    pub completion_tokens: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens`.
    pub reasoning_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`.
    pub cached_tokens: Option<u64>,
    /// The real cost, when the response states one.
    pub cost: Option<Micros>,
}

/// An `error` object from the upstream (a JSON error body or a mid-stream error event).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamError {
    /// `error.code`, as text (OpenRouter sends numbers, some providers strings).
    pub code: Option<String>,
    /// `error.message`.
    pub message: Option<String>,
}

/// What a response (or a stream, event by event) told about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseSummary {
    /// The generation id (`id`), for a generation lookup.
    pub id: Option<String>,
    /// The model that served the request.
    pub model: Option<String>,
    /// The provider that served it.
    pub provider: Option<String>,
    /// The last `usage` seen.
    pub usage: Option<Usage>,
    /// The first `error` seen.
    pub error: Option<UpstreamError>,
}

impl ResponseSummary {
    /// Folds a later part in: the first id, model, provider and error stay; a later usage wins.
    pub fn merge(&mut self, later: ResponseSummary) {
        self.id = self.id.take().or(later.id);
        self.model = self.model.take().or(later.model);
        self.provider = self.provider.take().or(later.provider);
        self.error = self.error.take().or(later.error);
        if later.usage.is_some() {
            self.usage = later.usage;
        }
    }

    /// Whether id, model and provider are all known (later events can only add usage/error).
    pub(crate) fn has_identity(&self) -> bool {
        self.id.is_some() && self.model.is_some() && self.provider.is_some()
    }

    /// The real cost, if the response stated one.
    #[cfg(test)]
    pub fn cost(&self) -> Option<Micros> {
        self.usage.as_ref().and_then(|u| u.cost)
    }
}

#[derive(Deserialize)]
struct RawResponse<'a> {
    id: Option<Value>,
    model: Option<Value>,
    provider: Option<Value>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    error: Option<Value>,
}

/// The money fields of a `usage` object, as literal JSON text.
#[derive(Default, Deserialize)]
struct RawUsageCost<'a> {
    #[serde(borrow)]
    cost: Option<&'a RawValue>,
    #[serde(borrow)]
    cost_details: Option<&'a RawValue>,
}

/// `cost_details` of a `usage` object.
#[derive(Default, Deserialize)]
struct RawCostDetails<'a> {
    #[serde(borrow)]
    upstream_inference_cost: Option<&'a RawValue>,
}

/// The money fields of a generation lookup's `data`, as literal JSON text.
#[derive(Default, Deserialize)]
struct RawGenerationCost<'a> {
    #[serde(borrow)]
    total_cost: Option<&'a RawValue>,
    #[serde(borrow)]
    upstream_inference_cost: Option<&'a RawValue>,
}

/// `T` read from `raw`, or its default when `raw` is absent or not a `T` (lenient: a response
/// is never failed for an odd field; a duplicated key makes the cost unknown, not cheaper).
fn lenient<'a, T: Deserialize<'a> + Default>(raw: Option<&'a RawValue>) -> T {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default()
}

/// Parses a JSON response body (or one SSE event's data); `None` when it is not a JSON object.
pub fn parse_response(body: &[u8]) -> Option<ResponseSummary> {
    let raw: RawResponse = serde_json::from_slice(body).ok()?;
    Some(ResponseSummary {
        id: text(raw.id.as_ref()),
        model: text(raw.model.as_ref()),
        provider: text(raw.provider.as_ref()),
        usage: raw.usage.and_then(usage),
        error: raw.error.as_ref().and_then(error),
    })
}

fn usage(raw: &RawValue) -> Option<Usage> {
    let v: Value = serde_json::from_str(raw.get()).ok()?;
    let obj = v.as_object()?;
    let int = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_u64))
    };
    let nested = |outer: &str, inner: &str| {
        obj.get(outer)
            .and_then(|o| o.get(inner))
            .and_then(Value::as_u64)
    };
    let byok = obj.get("is_byok").and_then(Value::as_bool).unwrap_or(false);
    let money: RawUsageCost = lenient(Some(raw));
    let details: RawCostDetails = lenient(money.cost_details);
    Some(Usage {
        prompt_tokens: int(&["prompt_tokens", "input_tokens"]),
        completion_tokens: int(&["completion_tokens", "output_tokens"]),
        reasoning_tokens: nested("completion_tokens_details", "reasoning_tokens")
            .or_else(|| nested("output_tokens_details", "reasoning_tokens")),
        cached_tokens: nested("prompt_tokens_details", "cached_tokens"),
        cost: total_cost(money.cost, byok, details.upstream_inference_cost),
    })
}

/// `cost`, plus the upstream's charge for BYOK; `None` when `cost` is absent or unreadable.
fn total_cost(cost: Option<&RawValue>, byok: bool, upstream: Option<&RawValue>) -> Option<Micros> {
    let cost = usd(cost?)?;
    if byok {
        // An unreadable upstream charge must not make a BYOK request look cheaper than it was:
        // without it the cost is unknown (the gateway falls back to a lookup or the worst case).
        let extra = match upstream {
            None => Micros::ZERO,
            Some(v) if v.get() == "null" => Micros::ZERO,
            Some(v) => usd(v)?,
        };
        return Some(cost.saturating_add(extra));
    }
    Some(cost)
}

/// A USD amount given as a JSON number (its literal text) or a decimal string, rounded up to
/// the micro-USD (the ledger never charges less than the bill). Anything else (`null`, `true`,
/// an object) is no amount.
fn usd(raw: &RawValue) -> Option<Micros> {
    let text = raw.get();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).ok()?;
        return Micros::parse_upstream(s.trim(), Rounding::Up).ok();
    }
    Micros::parse_upstream(text, Rounding::Up).ok()
}

fn error(v: &Value) -> Option<UpstreamError> {
    match v {
        Value::Object(obj) => Some(UpstreamError {
            code: obj.get("code").and_then(|c| match c {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }),
            message: text(obj.get("message")),
        }),
        Value::String(s) => Some(UpstreamError {
            code: None,
            message: Some(s.clone()),
        }),
        _ => None,
    }
}

/// A non-empty string field.
fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The cost of one generation from `GET /api/v1/generation?id=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationCost {
    /// The generation id.
    pub id: Option<String>,
    /// `total_cost` (plus `upstream_inference_cost` for BYOK).
    pub cost: Micros,
    /// Prompt tokens (native count when given).
    pub prompt_tokens: Option<u64>,
    /// Completion tokens (native count when given).
    pub completion_tokens: Option<u64>,
    /// The model that served it.
    pub model: Option<String>,
    /// The provider (`provider_name`).
    pub provider: Option<String>,
}

/// Parses a generation lookup body (`{"data":{...}}`); `None` when it states no readable cost
/// (the record may not exist yet: retry with backoff, then settle at the worst case).
pub fn parse_generation(body: &[u8]) -> Option<GenerationCost> {
    #[derive(Deserialize)]
    struct Root<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let raw = serde_json::from_slice::<Root>(body).ok()?.data;
    let data: Value = serde_json::from_str(raw.get()).ok()?;
    let data = data.as_object()?;
    let money: RawGenerationCost = lenient(Some(raw));
    let byok = data
        .get("is_byok")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let int = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| data.get(*k).and_then(Value::as_u64))
    };
    Some(GenerationCost {
        id: text(data.get("id")),
        cost: total_cost(money.total_cost, byok, money.upstream_inference_cost)?,
        prompt_tokens: int(&["native_tokens_prompt", "tokens_prompt"]),
        completion_tokens: int(&["native_tokens_completion", "tokens_completion"]),
        model: text(data.get("model")),
        provider: text(data.get("provider_name")),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_a_chat_completion() {
        let body = br#"{"id":"gen-123","provider":"OpenAI","model":"openai/gpt-4o","object":"chat.completion",
            "choices":[{"message":{"role":"assistant","content":"hi \"usage\""}}],
            "usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cost":0.0001234,
                     "prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}}}"#;
        let s = parse_response(body).unwrap();
        assert_eq!(s.id.as_deref(), Some("gen-123"));
        assert_eq!(s.model.as_deref(), Some("openai/gpt-4o"));
        assert_eq!(s.provider.as_deref(), Some("OpenAI"));
        let u = s.usage.clone().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(10), Some(5)));
        assert_eq!((u.cached_tokens, u.reasoning_tokens), (Some(2), Some(1)));
        // 123.4 µUSD is charged as 124: the ledger never charges less than the bill.
        assert_eq!(s.cost(), Some(Micros(124)));
        assert!(s.error.is_none());
    }

    #[test]
    fn reads_embeddings_and_responses_usage() {
        let s = parse_response(
            br#"{"data":[],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8,"cost":2e-6}}"#,
        );
        assert_eq!(s.unwrap().cost(), Some(Micros(2)));
        let s = parse_response(br#"{"usage":{"input_tokens":3,"output_tokens":4,"cost":"0.5"}}"#)
            .unwrap();
        let u = s.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cost),
            (Some(3), Some(4), Some(Micros(500_000)))
        );
    }

    #[test]
    fn sub_micro_costs_round_up() {
        let cost = |c: &str| {
            let body = format!(r#"{{"usage":{{"cost":{c}}}}}"#);
            parse_response(body.as_bytes()).unwrap().cost()
        };
        assert_eq!(cost("0.0000004"), Some(Micros(1)));
        assert_eq!(cost("1e-12"), Some(Micros(1)));
        assert_eq!(cost("0.0000014"), Some(Micros(2)));
        assert_eq!(cost("\"0.0000000001\""), Some(Micros(1)));
        assert_eq!(cost("0"), Some(Micros(0)));
        assert_eq!(cost("0.000002"), Some(Micros(2)));
        // More digits than an f64 holds: read from the literal, the bill is above 1 µUSD.
        assert_eq!(cost("0.0000010000000000000000001"), Some(Micros(2)));
        assert_eq!(cost("1.0000000000000000000001E-6"), Some(Micros(2)));
        assert_eq!(cost("0.000001000000000000000000"), Some(Micros(1)));
        assert_eq!(cost("null"), None);
        assert_eq!(cost("true"), None);
        let g = parse_generation(br#"{"data":{"total_cost":0.0000001}}"#).unwrap();
        assert_eq!(g.cost, Micros(1));
    }

    #[test]
    fn byok_adds_the_upstream_charge() {
        let s = parse_response(
            br#"{"usage":{"cost":0.00001,"is_byok":true,"cost_details":{"upstream_inference_cost":0.0002}}}"#,
        );
        assert_eq!(s.unwrap().cost(), Some(Micros(210)));
        let s = parse_response(br#"{"usage":{"cost":0.00001,"is_byok":true,"cost_details":{"upstream_inference_cost":"x"}}}"#);
        assert_eq!(s.unwrap().cost(), None);
        let s = parse_response(
            br#"{"usage":{"cost":0.00001,"cost_details":{"upstream_inference_cost":0.0002}}}"#,
        );
        assert_eq!(s.unwrap().cost(), Some(Micros(10)));
    }

    #[test]
    fn tolerates_odd_fields_and_reads_errors() {
        let s = parse_response(br#"{"id":7,"model":null,"usage":"none","error":{"code":502,"message":"upstream down"}}"#)
            .unwrap();
        assert_eq!(s.id, None);
        assert_eq!(s.usage, None);
        assert_eq!(
            s.error,
            Some(UpstreamError {
                code: Some("502".into()),
                message: Some("upstream down".into())
            })
        );
        let s = parse_response(br#"{"usage":{"cost":-1,"prompt_tokens":-4}}"#).unwrap();
        assert_eq!(s.usage, Some(Usage::default()));
        assert!(parse_response(b"[1]").is_none());
        assert!(parse_response(b"not json").is_none());
    }

    #[test]
    fn merge_keeps_first_identity_and_last_usage() {
        let mut a = parse_response(br#"{"id":"a","model":"m1","usage":{"cost":1}}"#).unwrap();
        a.merge(
            parse_response(
                br#"{"id":"b","provider":"p","usage":{"cost":2},"error":{"message":"x"}}"#,
            )
            .unwrap(),
        );
        a.merge(parse_response(br#"{"error":{"message":"y"}}"#).unwrap());
        assert_eq!(a.id.as_deref(), Some("a"));
        assert_eq!(a.provider.as_deref(), Some("p"));
        assert_eq!(a.cost(), Some(Micros(2_000_000)));
        assert_eq!(a.error.unwrap().message.as_deref(), Some("x"));
    }

    #[test]
    fn reads_a_generation_lookup() {
        let body = br#"{"data":{"id":"gen-1","total_cost":0.0015,"tokens_prompt":10,"native_tokens_prompt":12,
            "tokens_completion":3,"model":"openai/gpt-4o","provider_name":"Azure","is_byok":false}}"#;
        let g = parse_generation(body).unwrap();
        assert_eq!(g.cost, Micros(1500));
        assert_eq!(g.prompt_tokens, Some(12));
        assert_eq!(g.completion_tokens, Some(3));
        assert_eq!(g.provider.as_deref(), Some("Azure"));
        assert!(parse_generation(br#"{"error":{"code":404,"message":"not found"}}"#).is_none());
        assert!(parse_generation(br#"{"data":{"id":"gen-1"}}"#).is_none());
        let exact = parse_generation(br#"{"data":{"total_cost":1.00000000000000000001}}"#);
        assert_eq!(exact.unwrap().cost, Micros(1_000_001), "not the f64 1.0");
        let byok =
            br#"{"data":{"total_cost":"0.001","is_byok":true,"upstream_inference_cost":null}}"#;
        assert_eq!(parse_generation(byok).unwrap().cost, Micros(1000));
    }
}
