//! The worst-case cost of a request, and the `max_tokens` clamp that makes it fit the budget.
//!
//! # The bound
//! For every model the request may be served by (`model` and each `models` entry), the worst
//! case is
//!
//! ```text
//! n × (request fee + images × image price + prompt bound × prompt price
//!      + max_tokens × max(completion, reasoning) price)
//! ```
//!
//! in pico-USD, converted to micro-USD rounding *up*; the quote is the maximum over the models.
//!
//! The prompt bound is `body bytes + overhead + images × image_tokens + media × media_tokens`,
//! capped by the model's context length where known, because:
//! - every tokenizer these providers use (byte-level BPE, SentencePiece with byte fallback, ...)
//!   emits at most one token per byte of UTF-8 text, and the JSON body holds every prompt byte
//!   plus quoting, keys and punctuation;
//! - what the body does not hold is added explicitly: chat-template and tool-use scaffolding
//!   (`overhead_tokens`, e.g. a tool-use system prompt of a few hundred tokens), and the tokens
//!   an image or a remote file turns into (`image_tokens` per image, `media_tokens` per other
//!   media part). Inline image data (`data:` URLs) is not counted as bytes: its tokens are the
//!   per-image allowance, not its base64 length;
//! - `n` completions may each bill the prompt, so the whole per-choice cost is multiplied by `n`.
//!
//! Known gaps (a provider bill above the bound is still charged in full, counted as an
//! overcharge): a tokenizer with an expanding normalisation (NFKC turns some 3-byte characters
//! into many), a remote PDF longer than `media_tokens`, and plugin fees such as web search.
//!
//! # The clamp
//! Given the remaining budget, the output cap `T` is the largest value such that the worst case
//! fits, never above the request's own `max_tokens`; a request without one gets the smallest
//! completion limit the models state, else `default_max_tokens` (a value is always injected).
//! If even `min(min_completion_tokens, requested)` cannot fit, the request is refused with the
//! cost it would have needed.

use serde_json::Value;

use super::ledger::BudgetExceeded;
use super::money::{Micros, UnitPrice};
use super::price::{ModelEntry, PriceError, PriceTable};

/// Tunables of the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EstimateConfig {
    /// Refuse when not even this many output tokens fit (default 16).
    pub min_completion_tokens: u64,
    /// Prompt tokens a request may cost beyond its bytes: templates, tool scaffolding (1024).
    pub overhead_tokens: u64,
    /// Prompt tokens one input image may cost (65 536: above every current provider's count).
    pub image_tokens: u64,
    /// Prompt tokens one other media part (file, audio, video) may cost beyond its bytes (65 536).
    pub media_tokens: u64,
    /// The output cap injected when the request has none and no model states a limit (32 768).
    pub default_max_tokens: u64,
}

impl Default for EstimateConfig {
    fn default() -> Self {
        Self {
            min_completion_tokens: 16,
            overhead_tokens: 1024,
            image_tokens: 65_536,
            media_tokens: 65_536,
            default_max_tokens: 32_768,
        }
    }
}

/// Which body field caps the output, by endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputField {
    /// `max_tokens` (chat completions, completions, messages).
    MaxTokens,
    /// `max_output_tokens` (responses).
    MaxOutputTokens,
    /// No output tokens (embeddings).
    None,
}

impl OutputField {
    /// The field for an OpenRouter API path; unknown paths are treated as chat-like.
    pub fn for_path(path: &str) -> Self {
        match path.trim_end_matches('/') {
            "/api/v1/embeddings" => OutputField::None,
            "/api/v1/responses" => OutputField::MaxOutputTokens,
            _ => OutputField::MaxTokens,
        }
    }

    /// The body key, if any.
    pub fn key(self) -> Option<&'static str> {
        match self {
            OutputField::MaxTokens => Some("max_tokens"),
            OutputField::MaxOutputTokens => Some("max_output_tokens"),
            OutputField::None => None,
        }
    }
}

/// Why a request could not be quoted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EstimateError {
    /// A model without a known price (fail closed).
    #[error(transparent)]
    Price(#[from] PriceError),
    /// Not even the minimum completion fits the remaining budget.
    #[error(transparent)]
    Budget(#[from] BudgetExceeded),
    /// A field the bound depends on is malformed (the client's fault: 400).
    #[error("field {field}: expected {expected}")]
    BadField {
        /// The body key.
        field: &'static str,
        /// What was expected, in a few words.
        expected: &'static str,
    },
}

/// What the bound needs to know about a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestShape {
    /// Every model the request may be served by, deduplicated, in order.
    pub models: Vec<String>,
    /// Body bytes, less inline image data.
    pub prompt_bytes: u64,
    /// Input images.
    pub images: u64,
    /// Other media parts (files, audio, video).
    pub media: u64,
    /// Completions asked for (`n`, default 1).
    pub choices: u64,
    /// The request's own output cap, if it set one.
    pub requested_max_tokens: Option<u64>,
    /// The field carrying the output cap.
    pub output: OutputField,
}

impl RequestShape {
    /// Reads the shape of a (policy-filtered) JSON body of `body_len` bytes.
    pub fn from_json(
        body: &Value,
        body_len: usize,
        output: OutputField,
    ) -> Result<Self, EstimateError> {
        let bad = |field, expected| EstimateError::BadField { field, expected };
        let mut models: Vec<String> = Vec::new();
        match body.get("model") {
            None | Some(Value::Null) => {}
            Some(Value::String(m)) => models.push(m.clone()),
            Some(_) => return Err(bad("model", "a string")),
        }
        match body.get("models") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for m in list {
                    let m = m
                        .as_str()
                        .ok_or_else(|| bad("models", "an array of strings"))?;
                    if !models.iter().any(|x| x == m) {
                        models.push(m.to_owned());
                    }
                }
            }
            Some(_) => return Err(bad("models", "an array of strings")),
        }
        if models.is_empty() {
            return Err(bad("model", "a model name"));
        }
        let choices = match body.get("n") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("n", "a positive integer"))?,
        };
        let mut requested = None;
        let mut keys: Vec<&'static str> = output.key().into_iter().collect();
        if output == OutputField::MaxTokens {
            keys.push("max_completion_tokens");
        }
        for key in keys {
            match body.get(key) {
                None | Some(Value::Null) => {}
                // Of two caps, the provider may honour either: bound by the larger.
                Some(v) => {
                    let t = v
                        .as_u64()
                        .ok_or_else(|| bad(key, "a non-negative integer"))?;
                    requested = Some(requested.map_or(t, |r: u64| r.max(t)));
                }
            }
        }
        let mut media = Media::default();
        media.walk(body);
        Ok(Self {
            models,
            prompt_bytes: (body_len as u64).saturating_sub(media.inline_image_bytes),
            images: media.images,
            media: media.other,
            choices,
            requested_max_tokens: requested,
            output,
        })
    }
}

/// Media parts found in a body.
#[derive(Default)]
struct Media {
    images: u64,
    other: u64,
    inline_image_bytes: u64,
}

impl Media {
    /// Classifies every object with a `type` (content parts in chat, responses, messages and
    /// multimodal embeddings). Over-counting (e.g. a tool schema that says `"type": "image"`)
    /// only raises the bound.
    fn walk(&mut self, v: &Value) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| self.walk(i)),
            Value::Object(map) => {
                match map.get("type").and_then(Value::as_str) {
                    Some("image_url" | "input_image" | "image") => {
                        self.images += 1;
                        self.inline_image_bytes += data_url_bytes(v);
                        return;
                    }
                    Some("file" | "input_file" | "input_audio" | "video_url" | "document") => {
                        self.other += 1;
                    }
                    _ => {}
                }
                map.values().for_each(|x| self.walk(x));
            }
            _ => {}
        }
    }
}

/// Bytes of inline data inside an image part (`data:` URLs and base64 `data` fields).
fn data_url_bytes(v: &Value) -> u64 {
    match v {
        Value::String(s) if s.starts_with("data:") => s.len() as u64,
        Value::Array(items) => items.iter().map(data_url_bytes).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, x)| match x {
                Value::String(s) if k == "data" => s.len() as u64,
                _ => data_url_bytes(x),
            })
            .sum(),
        _ => 0,
    }
}

/// The quote for one request at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// The worst-case cost at `max_tokens` (what to reserve).
    pub worst_case: Micros,
    /// The output cap the forwarded body must carry (`None` for embeddings).
    pub max_tokens: Option<u64>,
    /// The model with the highest worst case.
    pub model: String,
}

/// Per-model terms of the bound, in pico-USD.
struct Terms {
    fixed: u128,
    per_output_token: UnitPrice,
}

impl Terms {
    fn new(shape: &RequestShape, e: &ModelEntry, cfg: &EstimateConfig) -> Self {
        let mut prompt = shape
            .prompt_bytes
            .saturating_add(cfg.overhead_tokens)
            .saturating_add(shape.images.saturating_mul(cfg.image_tokens))
            .saturating_add(shape.media.saturating_mul(cfg.media_tokens));
        if let Some(ctx) = e.limits.context_length {
            prompt = prompt.min(ctx);
        }
        let fixed = e
            .price
            .request
            .cost_picos(1)
            .saturating_add(e.price.image.cost_picos(shape.images))
            .saturating_add(e.price.prompt.cost_picos(prompt));
        Self {
            fixed,
            per_output_token: e.price.output_bound(),
        }
    }

    fn cost(&self, choices: u64, max_tokens: u64) -> Micros {
        let one = self
            .fixed
            .saturating_add(self.per_output_token.cost_picos(max_tokens));
        Micros::from_picos_ceil(one.saturating_mul(u128::from(choices)))
    }
}

/// Quotes `shape` against `remaining`: the worst case, and the output cap to inject.
pub fn quote(
    shape: &RequestShape,
    prices: &PriceTable,
    cfg: &EstimateConfig,
    remaining: Micros,
) -> Result<Quote, EstimateError> {
    let mut entries = Vec::with_capacity(shape.models.len());
    for m in &shape.models {
        entries.push((m.as_str(), prices.lookup(m)?.0));
    }
    let terms: Vec<(&str, Terms)> = entries
        .iter()
        .map(|(m, e)| (*m, Terms::new(shape, e, cfg)))
        .collect();
    let worst = |t: u64| -> (Micros, &str) {
        terms
            .iter()
            .map(|(m, x)| (x.cost(shape.choices, t), *m))
            .fold((Micros::ZERO, ""), |a, b| {
                if b.0 > a.0 || a.1.is_empty() { b } else { a }
            })
    };
    if shape.output == OutputField::None {
        let (cost, model) = worst(0);
        if cost > remaining {
            return Err(BudgetExceeded {
                remaining,
                needed: cost,
            }
            .into());
        }
        return Ok(Quote {
            worst_case: cost,
            max_tokens: None,
            model: model.to_owned(),
        });
    }
    let hi = shape.requested_max_tokens.unwrap_or_else(|| {
        let caps = entries
            .iter()
            .filter_map(|(_, e)| e.limits.completion_cap());
        caps.min().unwrap_or(cfg.default_max_tokens)
    });
    let lo = cfg.min_completion_tokens.min(hi);
    let (min_cost, _) = worst(lo);
    if min_cost > remaining {
        return Err(BudgetExceeded {
            remaining,
            needed: min_cost,
        }
        .into());
    }
    // Largest t in [lo, hi] with worst(t) ≤ remaining; worst is non-decreasing in t.
    // Invariant: worst(ok) ≤ remaining < worst(bad).
    let mut ok = lo;
    if worst(hi).0 <= remaining {
        ok = hi;
    } else {
        let mut bad = hi;
        while bad - ok > 1 {
            let mid = ok + (bad - ok) / 2;
            if worst(mid).0 <= remaining {
                ok = mid;
            } else {
                bad = mid;
            }
        }
    }
    let (cost, model) = worst(ok);
    Ok(Quote {
        worst_case: cost,
        max_tokens: Some(ok),
        model: model.to_owned(),
    })
}

/// Writes the quote's output cap into the body to forward (and into `max_completion_tokens`
/// when the body carries that too, so no field exceeds the reserved cap).
pub fn apply(quote: &Quote, output: OutputField, body: &mut Value) {
    let (Some(t), Some(key), Value::Object(map)) = (quote.max_tokens, output.key(), body) else {
        return;
    };
    map.insert(key.to_owned(), Value::from(t));
    if output == OutputField::MaxTokens && map.contains_key("max_completion_tokens") {
        map.insert("max_completion_tokens".to_owned(), Value::from(t));
    }
}

#[cfg(test)]
mod tests;
