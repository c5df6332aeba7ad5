//! Model prices: the policy's table, the upstream's `GET /api/v1/models` list, and a lookup that
//! refuses an unpriced model (fail closed) unless the policy gives a fallback price.
//!
//! When both the policy and the upstream price a model, each component takes the *higher* of
//! the two: either may be stale, and prices only ever feed worst-case bounds, where too high
//! costs a little headroom and too low could break the budget. Model ids match exactly (ASCII
//! case aside): a `:variant` (`:online`, `:nitro`) is a different id and needs its own price.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::money::{Rounding, UnitPrice};

/// What one model costs, in pico-USD per unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelPrice {
    /// Per prompt (input) token; from the upstream list, the higher of the prompt and cache-write
    /// prices, since an agent can mark its prompt for caching.
    pub prompt: UnitPrice,
    /// Per completion (output) token.
    pub completion: UnitPrice,
    /// Per request.
    pub request: UnitPrice,
    /// Per input image.
    pub image: UnitPrice,
    /// Per reasoning token, when priced apart from completion tokens.
    pub reasoning: Option<UnitPrice>,
}

impl ModelPrice {
    /// The price bound for one output token: a completion or a reasoning token, whichever costs
    /// more (reasoning tokens are output tokens and count against `max_tokens`).
    pub fn output_bound(&self) -> UnitPrice {
        self.completion
            .max(self.reasoning.unwrap_or(UnitPrice::ZERO))
    }

    /// OpenRouter's `provider.max_price` for these prices: USD per million tokens for `prompt`
    /// and `completion` (the output bound: reasoning tokens are billed as completion tokens
    /// upstream), USD per request and per image; exact decimal strings.
    pub fn max_price(&self) -> Value {
        serde_json::json!({
            "prompt": self.prompt.usd_per_million(),
            "completion": self.output_bound().usd_per_million(),
            "request": self.request.to_string(),
            "image": self.image.to_string(),
        })
    }

    /// Component-wise maximum of two prices for the same model.
    pub fn max(self, other: ModelPrice) -> ModelPrice {
        ModelPrice {
            prompt: self.prompt.max(other.prompt),
            completion: self.completion.max(other.completion),
            request: self.request.max(other.request),
            image: self.image.max(other.image),
            reasoning: match (self.reasoning, other.reasoning) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Token limits of a model, where known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelLimits {
    /// Prompt plus completion tokens the model accepts.
    pub context_length: Option<u64>,
    /// Completion tokens the model can produce.
    pub max_completion_tokens: Option<u64>,
}

impl ModelLimits {
    /// The larger of each known limit (limits that cap a worst case must not be under-stated).
    pub fn max(self, other: ModelLimits) -> ModelLimits {
        let m = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        ModelLimits {
            context_length: m(self.context_length, other.context_length),
            max_completion_tokens: m(self.max_completion_tokens, other.max_completion_tokens),
        }
    }

    /// The largest completion the model allows: its max completion, else its context length.
    pub fn completion_cap(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.context_length)
    }
}

/// A model's price and limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelEntry {
    /// What it costs.
    pub price: ModelPrice,
    /// Its token limits.
    pub limits: ModelLimits,
}

/// Where a looked-up price came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceSource {
    /// The policy's table only.
    Policy,
    /// The upstream's model list only.
    Upstream,
    /// Both, component-wise maximum.
    Both,
    /// The policy's fallback price (the model is priced nowhere).
    Fallback,
}

/// A model without a usable price.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PriceError {
    /// Neither the policy nor the upstream list prices the model, and there is no fallback.
    #[error("no price known for model {model:?}")]
    Unknown {
        /// The model as the request named it.
        model: String,
        /// Whether an upstream model list has been loaded (else the refusal may be temporary).
        upstream_loaded: bool,
    },
}

impl PriceError {
    /// The HTTP status for the refusal: 403 when the price list is loaded and simply does not
    /// price the model (a policy refusal), 503 while no upstream list has loaded yet (temporary;
    /// the agent may retry).
    pub fn http_status(&self) -> u16 {
        match self {
            PriceError::Unknown {
                upstream_loaded: true,
                ..
            } => 403,
            PriceError::Unknown {
                upstream_loaded: false,
                ..
            } => 503,
        }
    }
}

/// The upstream's model list could not be read as a whole.
#[derive(Debug, thiserror::Error)]
#[error("models list: {0}")]
pub struct ModelsListError(#[from] serde_json::Error);

/// The prices read from `GET /api/v1/models`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamPrices {
    /// Priced models by id.
    pub models: HashMap<String, ModelEntry>,
    /// Models left unpriced, with why (`variable pricing`, a bad price string, ...), for the log.
    pub skipped: Vec<(String, String)>,
}

/// Every price tollgate knows, immutable (swap a new one in to refresh).
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    policy: HashMap<String, ModelEntry>,
    upstream: Option<HashMap<String, ModelEntry>>,
    fallback: Option<ModelPrice>,
}

impl PriceTable {
    /// A table of the policy's prices, with an optional fallback for unpriced models.
    pub fn new(policy: HashMap<String, ModelEntry>, fallback: Option<ModelPrice>) -> Self {
        Self {
            policy: lowercase_keys(policy),
            upstream: None,
            fallback,
        }
    }

    /// A copy of this table with the upstream's prices replaced by `upstream`.
    pub fn with_upstream(&self, upstream: UpstreamPrices) -> Self {
        Self {
            upstream: Some(lowercase_keys(upstream.models)),
            ..self.clone()
        }
    }

    /// Whether an upstream model list has been loaded.
    pub fn upstream_loaded(&self) -> bool {
        self.upstream.is_some()
    }

    /// The price and limits of `model`, and where they came from.
    /// Model ids compare ignoring ASCII case.
    pub fn lookup(&self, model: &str) -> Result<(ModelEntry, PriceSource), PriceError> {
        let key = model.to_ascii_lowercase();
        let upstream = self.upstream.as_ref().and_then(|u| u.get(&key));
        match (self.policy.get(&key), upstream) {
            (Some(p), Some(u)) => Ok((
                ModelEntry {
                    price: p.price.max(u.price),
                    limits: p.limits.max(u.limits),
                },
                PriceSource::Both,
            )),
            (Some(p), None) => Ok((*p, PriceSource::Policy)),
            (None, Some(u)) => Ok((*u, PriceSource::Upstream)),
            (None, None) => match self.fallback {
                Some(price) => Ok((
                    ModelEntry {
                        price,
                        limits: ModelLimits::default(),
                    },
                    PriceSource::Fallback,
                )),
                None => Err(PriceError::Unknown {
                    model: model.to_owned(),
                    upstream_loaded: self.upstream_loaded(),
                }),
            },
        }
    }
}

/// Model ids are compared ignoring ASCII case (as the policy does).
fn lowercase_keys(map: HashMap<String, ModelEntry>) -> HashMap<String, ModelEntry> {
    map.into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

#[derive(Deserialize)]
struct RawModels {
    data: Vec<Value>,
}

#[derive(Deserialize)]
struct RawModel {
    id: String,
    #[serde(default)]
    pricing: Option<RawPricing>,
    #[serde(default)]
    context_length: Option<Value>,
    #[serde(default)]
    top_provider: Option<RawTopProvider>,
}

#[derive(Deserialize)]
struct RawPricing {
    prompt: Option<Value>,
    completion: Option<Value>,
    request: Option<Value>,
    image: Option<Value>,
    internal_reasoning: Option<Value>,
    input_cache_write: Option<Value>,
}

#[derive(Deserialize)]
struct RawTopProvider {
    #[serde(default)]
    context_length: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
}

/// Parses OpenRouter's `GET /api/v1/models` body. Unknown fields are ignored; a model whose
/// entry is malformed, has no prompt or completion price, a negative or non-numeric price, or
/// `"-1"` (variable pricing) is left out (listed in `skipped`) and so stays unpriced.
pub fn parse_models(body: &[u8]) -> Result<UpstreamPrices, ModelsListError> {
    let raw: RawModels = serde_json::from_slice(body)?;
    let mut out = UpstreamPrices::default();
    for entry in raw.data {
        let Ok(model) = RawModel::deserialize(&entry) else {
            let id = entry.get("id").and_then(Value::as_str).unwrap_or("?");
            out.skipped
                .push((id.to_owned(), "malformed entry".to_owned()));
            continue;
        };
        match model_entry(&model) {
            Ok(e) => {
                out.models.insert(model.id, e);
            }
            Err(why) => out.skipped.push((model.id, why)),
        }
    }
    Ok(out)
}

fn model_entry(model: &RawModel) -> Result<ModelEntry, String> {
    let pricing = model.pricing.as_ref().ok_or("no pricing")?;
    let prompt = price_field("prompt", pricing.prompt.as_ref())?.ok_or("no prompt price")?;
    let completion =
        price_field("completion", pricing.completion.as_ref())?.ok_or("no completion price")?;
    let cache_write = price_field("input_cache_write", pricing.input_cache_write.as_ref())?;
    let price = ModelPrice {
        prompt: prompt.max(cache_write.unwrap_or_default()),
        completion,
        request: price_field("request", pricing.request.as_ref())?.unwrap_or_default(),
        image: price_field("image", pricing.image.as_ref())?.unwrap_or_default(),
        reasoning: price_field("internal_reasoning", pricing.internal_reasoning.as_ref())?,
    };
    let top = model.top_provider.as_ref();
    let limits = ModelLimits {
        context_length: count(model.context_length.as_ref()),
        max_completion_tokens: top.and_then(|t| count(t.max_completion_tokens.as_ref())),
    }
    .max(ModelLimits {
        context_length: top.and_then(|t| count(t.context_length.as_ref())),
        max_completion_tokens: None,
    });
    Ok(ModelEntry { price, limits })
}

/// One pricing component: a decimal string (or number), `None` when absent or null.
fn price_field(key: &str, v: Option<&Value>) -> Result<Option<UnitPrice>, String> {
    let text = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(format!("{key} price is not a string")),
    };
    if text == "-1" {
        return Err("variable pricing".to_owned());
    }
    // Rounded up past the pico-USD: prices only ever feed worst-case bounds.
    UnitPrice::parse_upstream(&text, Rounding::Up)
        .map(Some)
        .map_err(|e| {
            let found: String = text.chars().take(40).collect(); // hostile text may be long
            format!("{key} price: {e}, found {found:?}")
        })
}

/// A positive token count, `None` when absent, null, zero or not an integer.
fn count(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64).filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MODELS: &str = r#"{"data":[
        {"id":"openai/gpt-4o","name":"GPT-4o","context_length":128000,
         "pricing":{"prompt":"0.0000025","completion":"0.00001","request":"0","image":"0.003613",
                    "web_search":"0","internal_reasoning":"0","input_cache_read":"0.00000125"},
         "top_provider":{"context_length":128000,"max_completion_tokens":16384,"is_moderated":true},
         "extra":{"nested":[1,2,3]}},
        {"id":"anthropic/claude-sonnet-4","context_length":200000,
         "pricing":{"prompt":"0.000003","completion":"0.000015","input_cache_write":"0.00000375"}},
        {"id":"openrouter/auto","pricing":{"prompt":"-1","completion":"-1"}},
        {"id":"bad/negative","pricing":{"prompt":"-0.1","completion":"0.1"}},
        {"id":"bad/text","pricing":{"prompt":"cheap","completion":"0.1"}},
        {"id":"bad/no-pricing"},
        {"id":"bad/half","pricing":{"prompt":"0.1"}},
        {"id":"numeric/prices","pricing":{"prompt":0.000001,"completion":2e-6},"context_length":null},
        {"name":"no id"},
        {"id":"o/reasoner","pricing":{"prompt":"0.000001","completion":"0.000002","internal_reasoning":"0.000004"}}
    ],"more":true}"#;

    #[test]
    fn parses_the_models_list() {
        let up = parse_models(MODELS.as_bytes()).unwrap();
        let gpt = up.models["openai/gpt-4o"];
        assert_eq!(gpt.price.prompt, UnitPrice(2_500_000));
        assert_eq!(gpt.price.completion, UnitPrice(10_000_000));
        assert_eq!(gpt.price.image, UnitPrice(3_613_000_000));
        assert_eq!(gpt.price.reasoning, Some(UnitPrice::ZERO));
        assert_eq!(gpt.limits.context_length, Some(128_000));
        assert_eq!(gpt.limits.max_completion_tokens, Some(16_384));
        // The cache-write price bounds the prompt price.
        assert_eq!(
            up.models["anthropic/claude-sonnet-4"].price.prompt,
            UnitPrice(3_750_000)
        );
        assert_eq!(
            up.models["numeric/prices"].price.completion,
            UnitPrice(2_000_000)
        );
        assert_eq!(
            up.models["o/reasoner"].price.output_bound(),
            UnitPrice(4_000_000)
        );
        assert_eq!(up.models.len(), 4);
        let skipped: HashMap<_, _> = up.skipped.iter().cloned().collect();
        assert_eq!(skipped["openrouter/auto"], "variable pricing");
        assert!(
            skipped["bad/negative"].contains("zero or more, found \"-0.1\""),
            "{skipped:?}"
        );
        assert!(skipped["bad/text"].contains("found \"cheap\""));
        assert_eq!(skipped["bad/no-pricing"], "no pricing");
        assert_eq!(skipped["bad/half"], "no completion price");
        assert!(skipped.contains_key("?"));
    }

    #[test]
    fn refuses_a_body_that_is_not_a_models_list() {
        assert!(parse_models(b"{}").is_err());
        assert!(parse_models(b"[1,2]").is_err());
        assert!(parse_models(b"{\"data\":[").is_err());
    }

    fn policy_price(prompt: u64) -> ModelEntry {
        ModelEntry {
            price: ModelPrice {
                prompt: UnitPrice(prompt),
                completion: UnitPrice(1),
                ..Default::default()
            },
            limits: ModelLimits {
                context_length: Some(1000),
                max_completion_tokens: None,
            },
        }
    }

    #[test]
    fn lookup_merges_policy_and_upstream_and_fails_closed() {
        let policy = HashMap::from([
            ("openai/gpt-4o".to_owned(), policy_price(9)),
            ("local/only".to_owned(), policy_price(5)),
        ]);
        let table = PriceTable::new(policy, None);
        assert_eq!(
            table.lookup("nobody/knows"),
            Err(PriceError::Unknown {
                model: "nobody/knows".into(),
                upstream_loaded: false
            })
        );
        assert_eq!(table.lookup("nobody/knows").unwrap_err().http_status(), 503);
        let table = table.with_upstream(parse_models(MODELS.as_bytes()).unwrap());
        let (gpt, src) = table.lookup("openai/gpt-4o").unwrap();
        assert_eq!(src, PriceSource::Both);
        assert_eq!(gpt.price.prompt, UnitPrice(2_500_000)); // the higher of 9 and upstream's
        assert_eq!(gpt.price.completion, UnitPrice(10_000_000));
        assert_eq!(gpt.limits.context_length, Some(128_000));
        assert_eq!(table.lookup("local/only").unwrap().1, PriceSource::Policy);
        assert_eq!(table.lookup("o/reasoner").unwrap().1, PriceSource::Upstream);
        assert_eq!(table.lookup("OpenAI/GPT-4o").unwrap().1, PriceSource::Both);
        let err = table.lookup("openrouter/auto").unwrap_err();
        assert_eq!(err.http_status(), 403);
        assert_eq!(
            err.to_string(),
            "no price known for model \"openrouter/auto\""
        );
        // Variants need their own price.
        assert!(table.lookup("openai/gpt-4o:online").is_err());
    }

    #[test]
    fn fallback_prices_unknown_models() {
        let fallback = ModelPrice {
            prompt: UnitPrice(7),
            completion: UnitPrice(8),
            ..Default::default()
        };
        let table = PriceTable::new(HashMap::new(), Some(fallback));
        let (e, src) = table.lookup("any/model").unwrap();
        assert_eq!((e.price, src), (fallback, PriceSource::Fallback));
    }
}
