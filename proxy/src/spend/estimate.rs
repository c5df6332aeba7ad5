//! The worst-case cost of a request, and the `max_tokens` clamp that makes it fit the budget.
//!
//! # The bound
//! The prices of a request are the component-wise maximum over every model that may serve it
//! (`model` and each `models` entry): the same prices are forced upstream as OpenRouter's
//! `provider.max_price` (see [`apply`]), so no provider may charge more per unit than the bound
//! assumes, whichever model and provider routing picks. For every model the worst case is then
//!
//! ```text
//! n × (request fee + images × image price + prompt bound × prompt price
//!      + max_tokens × max(completion, reasoning) price)
//! ```
//!
//! in pico-USD, converted to micro-USD rounding *up*; the quote is the maximum over the models.
//!
//! The prompt bound is `body bytes + overhead + images × image_tokens`, capped by the model's
//! context length where known, because:
//! - every tokenizer these providers use (byte-level BPE, SentencePiece with byte fallback, ...)
//!   emits at most one token per byte of UTF-8 text, and the JSON body holds every prompt byte
//!   plus quoting, keys and punctuation (the caller passes the longer of the body received and
//!   the body forwarded, as re-serialising can lengthen it);
//! - what the body does not hold is added explicitly: chat-template and tool-use scaffolding
//!   (`overhead_tokens`, e.g. a tool-use system prompt of a few hundred tokens), and the tokens
//!   an inline image turns into (`image_tokens` per image: providers scale images down to a
//!   bounded size). Inline image data (`data:` URLs, base64 `data`) of a *message content part*
//!   is not counted as bytes: its tokens are the per-image allowance, not its base64 length.
//!   Anywhere else (a tool schema, `response_format`) an object typed `image` is just text;
//! - media whose tokens the body does not bound (a remote URL or file id the provider fetches,
//!   and any file, audio or video part: a compressed PDF or a still video expands far beyond its
//!   bytes) can fill the whole context: the prompt bound is then the model's context length,
//!   and a model without a known context length is refused ([`EstimateError::Unbounded`]);
//! - `n` completions may each bill the prompt, so the whole per-choice cost is multiplied by `n`.
//!
//! Known gaps (a provider bill above the bound is still charged in full, counted as an
//! overcharge): a tokenizer with an expanding normalisation (NFKC turns some 3-byte characters
//! into many), audio priced apart from prompt tokens, and plugin fees such as web search.
//!
//! # The clamp
//! Given the remaining budget, the output cap `T` is the largest value such that the worst case
//! fits, never above the request's own `max_tokens`; a request without one (or with 0 or a
//! negative value, which providers read as "no limit") gets the smallest completion limit the
//! models state, else `default_max_tokens` (a value is always injected).
//! If even `min(min_completion_tokens, requested)` cannot fit, the request is refused with the
//! cost it would have needed.

use serde_json::Value;

use super::ledger::BudgetExceeded;
use super::money::{Micros, UnitPrice};
use super::price::{ModelEntry, ModelPrice, PriceError, PriceTable};

/// Tunables of the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EstimateConfig {
    /// Refuse when not even this many output tokens fit (default 16).
    pub min_completion_tokens: u64,
    /// Prompt tokens a request may cost beyond its bytes: templates, tool scaffolding (1024).
    pub overhead_tokens: u64,
    /// Prompt tokens one inline input image may cost (65 536: above every current provider's
    /// count).
    pub image_tokens: u64,
    /// The output cap injected when the request has none and no model states a limit (32 768).
    pub default_max_tokens: u64,
}

impl Default for EstimateConfig {
    fn default() -> Self {
        Self {
            min_completion_tokens: 16,
            overhead_tokens: 1024,
            image_tokens: 65_536,
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
    /// The request carries media the body does not bound (a remote URL, a file, audio or
    /// video) for a model whose context length is unknown (the client's fault: 400).
    #[error(
        "model {model:?} has no known context length, so media not inlined as an image (a URL, \
         file, audio or video) cannot be bounded; send images inline as data: URLs"
    )]
    Unbounded {
        /// The model without a context length.
        model: String,
    },
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
    /// Body bytes, less the inline data of message image parts.
    pub prompt_bytes: u64,
    /// Message image parts, inline or remote (each pays the per-image price).
    pub images: u64,
    /// Message media parts whose tokens the body does not bound: remote images, and every file,
    /// audio or video part. Any makes the prompt bound the model's whole context.
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
                // 0 and negative caps mean "no limit" to some providers: treat them as absent,
                // so a cap is injected.
                Some(v) if v.as_u64() == Some(0) || v.as_i64().is_some_and(|t| t < 0) => {}
                // Of two caps, the provider may honour either: bound by the larger.
                Some(v) => {
                    let t = v.as_u64().ok_or_else(|| bad(key, "an integer"))?;
                    requested = Some(requested.map_or(t, |r: u64| r.max(t)));
                }
            }
        }
        let mut media = Media::default();
        media.walk_body(body);
        Ok(Self {
            models,
            prompt_bytes: (body_len as u64).saturating_sub(media.inline_image_bytes),
            images: media.images,
            media: media.unbounded,
            choices,
            requested_max_tokens: requested,
            output,
        })
    }
}

/// Media parts found in a body's message content.
#[derive(Default)]
struct Media {
    images: u64,
    unbounded: u64,
    inline_image_bytes: u64,
}

/// Root keys holding message content: chat and messages (`messages`, `system`), responses and
/// embeddings (`input`), completions (`prompt`). Nothing else (tools, `response_format`, ...)
/// holds content parts: what is there is text to the model, whatever its `type` says.
const CONTENT_ROOTS: [&str; 4] = ["messages", "input", "system", "prompt"];
/// Keys inside a message or part that hold further content (a tool result's parts, a function
/// call's output).
const CONTENT_KEYS: [&str; 2] = ["content", "output"];

impl Media {
    fn walk_body(&mut self, body: &Value) {
        if let Value::Object(map) = body {
            for key in CONTENT_ROOTS {
                if let Some(v) = map.get(key) {
                    self.walk(v);
                }
            }
        }
    }

    /// Classifies the content parts (objects with a `type`) of messages, input items and tool
    /// results, descending only through arrays and content-holding keys.
    fn walk(&mut self, v: &Value) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| self.walk(i)),
            Value::Object(map) => {
                match map.get("type").and_then(Value::as_str) {
                    Some("image_url" | "input_image" | "image") => {
                        self.images += 1;
                        let inline = data_url_bytes(v);
                        if inline > 0 {
                            self.inline_image_bytes += inline;
                        } else {
                            // A URL or file id: the provider fetches something of any size.
                            self.unbounded += 1;
                        }
                        return;
                    }
                    Some(
                        "file" | "input_file" | "input_audio" | "audio" | "video_url"
                        | "input_video" | "video" | "document",
                    ) => {
                        self.unbounded += 1;
                        return;
                    }
                    _ => {}
                }
                for key in CONTENT_KEYS {
                    if let Some(x) = map.get(key) {
                        self.walk(x);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Bytes of inline data inside an image part (`data:` URLs and base64 `data` fields).
fn data_url_bytes(v: &Value) -> u64 {
    match v {
        // Only image data: a `data:text/...` URL would be text the model reads.
        Value::String(s) if s.starts_with("data:image/") => s.len() as u64,
        Value::Array(items) => items.iter().map(data_url_bytes).sum(),
        Value::Object(map) => {
            // A Messages API image source: `{"type":"base64","media_type":"image/png","data":..}`.
            let base64_image = map.get("type").and_then(Value::as_str) == Some("base64")
                && map
                    .get("media_type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.starts_with("image/"));
            map.iter()
                .map(|(k, x)| match x {
                    Value::String(s) if k == "data" && base64_image => s.len() as u64,
                    _ => data_url_bytes(x),
                })
                .sum()
        }
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
    /// The prices the bound used (the component-wise maximum over the request's models): the
    /// most any provider may charge per unit, forced upstream as `provider.max_price`.
    pub price: ModelPrice,
}

/// Per-model terms of the bound, in pico-USD.
struct Terms {
    fixed: u128,
    per_output_token: UnitPrice,
}

impl Terms {
    /// The terms for one model at `price` (the request's prices, not only this model's).
    fn new(
        shape: &RequestShape,
        model: &str,
        e: &ModelEntry,
        price: &ModelPrice,
        cfg: &EstimateConfig,
    ) -> Result<Self, EstimateError> {
        let ctx = e.limits.context_length;
        let prompt = if shape.media > 0 {
            // Media the body does not bound can fill the whole context, and nothing less.
            ctx.ok_or_else(|| EstimateError::Unbounded {
                model: model.to_owned(),
            })?
        } else {
            let bytes = shape
                .prompt_bytes
                .saturating_add(cfg.overhead_tokens)
                .saturating_add(shape.images.saturating_mul(cfg.image_tokens));
            ctx.map_or(bytes, |ctx| bytes.min(ctx))
        };
        let fixed = price
            .request
            .cost_picos(1)
            .saturating_add(price.image.cost_picos(shape.images))
            .saturating_add(price.prompt.cost_picos(prompt));
        Ok(Self {
            fixed,
            per_output_token: price.output_bound(),
        })
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
    // One `max_price` covers every model the request names, so every model is bounded at it.
    let price = entries
        .iter()
        .map(|(_, e)| e.price)
        .fold(ModelPrice::default(), ModelPrice::max);
    let mut terms: Vec<(&str, Terms)> = Vec::with_capacity(entries.len());
    for (m, e) in &entries {
        terms.push((m, Terms::new(shape, m, e, &price, cfg)?));
    }
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
            price,
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
        price,
    })
}

/// Writes the quote into the body to forward: its output cap (into `max_completion_tokens` too
/// when the body carries that, so no field exceeds the reserved cap), and its prices as
/// `provider.max_price`, so OpenRouter routes only to providers that charge no more per unit
/// than the reservation assumed.
pub fn apply(quote: &Quote, output: OutputField, body: &mut Value) {
    let Value::Object(map) = body else {
        return;
    };
    let provider = map
        .entry("provider")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !provider.is_object() {
        *provider = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(provider) = provider {
        provider.insert("max_price".to_owned(), quote.price.max_price());
    }
    let (Some(t), Some(key)) = (quote.max_tokens, output.key()) else {
        return;
    };
    map.insert(key.to_owned(), Value::from(t));
    if output == OutputField::MaxTokens && map.contains_key("max_completion_tokens") {
        map.insert("max_completion_tokens".to_owned(), Value::from(t));
    }
}

#[cfg(test)]
mod tests;
