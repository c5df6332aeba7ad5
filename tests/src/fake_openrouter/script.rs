//! What the fake OpenRouter answers: per-endpoint scripts a test sets before (or while) the proxy
//! talks to it, and the [`Gate`] that holds a response until the test lets it go.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

/// What a chat completion costs, as the fake reports it in `usage.cost` and generation lookups.
#[derive(Clone, Debug, PartialEq)]
pub enum Cost {
    /// A fixed amount in USD per request.
    Usd(f64),
    /// `max_tokens` of the forwarded request × this price in pico-USD (10⁻¹² USD) per token, and
    /// `completion_tokens` = `max_tokens`: the cost then equals a gateway's worst case exactly
    /// when the prompt and request prices are 0, so a budget test can predict every settlement.
    PerMaxToken {
        /// pico-USD per completion token.
        pico_per_token: u64,
    },
    /// What a real OpenRouter could bill at the worst, from the model's entry in the fake's
    /// model list (see [`Billing`]).
    Billed(Billing),
}

/// How [`Cost::Billed`] bills a chat completion, as an adversarial but real OpenRouter could:
///
/// - routing picks the *dearest* of the model's providers that the request's
///   `provider.max_price` allows (all of them without one); none allowed answers 404;
/// - prompt tokens: one per byte of the forwarded body, except the inline data of image parts
///   in message content (an image there is `image_tokens`; the same object in a tool schema is
///   text), plus `remote_tokens` per media part the provider fetches or decodes (a remote URL,
///   a file, audio, video); capped by the model's `context_length`;
/// - completion tokens: the larger of `max_tokens` and `max_completion_tokens` when positive,
///   else (absent, 0 or negative: "no limit") the model's `max_completion_tokens`, else its
///   context length;
/// - `n` completions each bill the whole request; the cost is exact in pico-USD (sub-micro
///   amounts included).
#[derive(Clone, Debug, PartialEq)]
pub struct Billing {
    /// The providers serving the model; empty: one provider at the model list's price.
    pub providers: Vec<ProviderPrice>,
    /// Prompt tokens one inline message image turns into.
    pub image_tokens: u64,
    /// Prompt tokens one fetched or decoded media part turns into (before the context cap).
    pub remote_tokens: u64,
}

impl Default for Billing {
    fn default() -> Billing {
        Billing {
            providers: Vec::new(),
            image_tokens: 1_000,
            remote_tokens: 10_000_000,
        }
    }
}

/// One provider's prices for a model, USD per unit as decimal strings (as in the model list).
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderPrice {
    /// The `provider` name in the answer.
    pub name: String,
    /// Per prompt token.
    pub prompt: String,
    /// Per completion token.
    pub completion: String,
    /// Per request.
    pub request: String,
    /// Per input image.
    pub image: String,
}

impl ProviderPrice {
    /// A provider charging `prompt` and `completion` per token, nothing per request or image.
    pub fn new(name: &str, prompt: &str, completion: &str) -> ProviderPrice {
        ProviderPrice {
            name: name.into(),
            prompt: prompt.into(),
            completion: completion.into(),
            request: "0".into(),
            image: "0".into(),
        }
    }
}

impl Cost {
    /// `PerMaxToken` from a decimal USD-per-token string such as `"0.00001"`.
    pub fn per_max_token(usd_per_token: &str) -> Cost {
        Cost::PerMaxToken {
            pico_per_token: usd_to_pico(usd_per_token),
        }
    }
}

/// Parses a non-negative decimal USD amount into pico-USD; panics on anything else (test data).
pub fn usd_to_pico(usd: &str) -> u64 {
    let (int, frac) = usd.split_once('.').unwrap_or((usd, ""));
    assert!(frac.len() <= 12, "more than 12 decimals in {usd:?}");
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().expect("integer part of a USD amount")
    };
    let frac_digits: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().expect("fraction of a USD amount")
    };
    int * 1_000_000_000_000 + frac_digits * 10u64.pow(12 - frac.len() as u32)
}

/// pico-USD as the f64 whose shortest decimal rendering is the exact amount (e.g. `0.0005`),
/// so the JSON the fake writes carries no binary-float noise.
pub fn pico_to_f64(pico: u64) -> f64 {
    format!(
        "{}.{:012}",
        pico / 1_000_000_000_000,
        pico % 1_000_000_000_000
    )
    .parse()
    .expect("a formatted decimal parses")
}

/// How an SSE response ends.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEnd {
    /// A final event (with `usage` when [`ChatScript::usage`]), then `data: [DONE]`.
    Done,
    /// After the content events, `data: {"id":..,"error":{"code":..,"message":..}}` and the
    /// end of the body (no usage, no `[DONE]`), as OpenRouter does when a provider fails.
    MidStreamError {
        /// `error.code`.
        code: u16,
        /// `error.message`.
        message: String,
    },
    /// After the content events, the connection is aborted (h1: no terminating chunk; h2:
    /// RST_STREAM): no usage ever arrives.
    Cut,
}

/// How `POST /api/v1/chat/completions` answers. JSON or SSE follows the request's `stream`.
#[derive(Clone, Debug)]
pub struct ChatScript {
    /// The status; anything but 200 answers `{"error":{"code":status,"message":error_message}}`.
    pub status: u16,
    /// The message of an error status.
    pub error_message: String,
    /// Include `usage` (JSON body, or the final SSE event).
    pub usage: bool,
    /// What the request costs.
    pub cost: Cost,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: u64,
    /// `usage.completion_tokens` (unless [`Cost::PerMaxToken`] sets it).
    pub completion_tokens: u64,
    /// The `provider` field.
    pub provider: String,
    /// The `model` field; default: the request's `model`, else the first of its `models`.
    pub routed_model: Option<String>,
    /// Content pieces: one SSE event each; the JSON answer is their concatenation.
    pub content: Vec<String>,
    /// Send `: OPENROUTER PROCESSING` before the first event.
    pub keepalive: bool,
    /// Pause before each SSE event after the first (and before the final one).
    pub event_delay: Duration,
    /// Pause before the response headers.
    pub response_delay: Duration,
    /// SSE: after the first content event, wait until this gate opens. JSON: wait before
    /// answering. Lets a test observe a response that is provably still in progress.
    pub hold: Option<Gate>,
    /// How an SSE response ends.
    pub end: StreamEnd,
}

impl Default for ChatScript {
    fn default() -> ChatScript {
        ChatScript {
            status: 200,
            error_message: "bad request".into(),
            usage: true,
            cost: Cost::Usd(0.00123),
            prompt_tokens: 12,
            completion_tokens: 3,
            provider: "OpenAI".into(),
            routed_model: None,
            content: vec!["h".into(), "i".into(), "!".into()],
            keepalive: true,
            event_delay: Duration::ZERO,
            response_delay: Duration::ZERO,
            hold: None,
            end: StreamEnd::Done,
        }
    }
}

impl ChatScript {
    /// A 200 answer costing `usd`.
    pub fn costing(usd: f64) -> ChatScript {
        ChatScript::default().cost(Cost::Usd(usd))
    }

    /// Sets the cost.
    pub fn cost(mut self, cost: Cost) -> ChatScript {
        self.cost = cost;
        self
    }

    /// Answers `status` with an OpenRouter-shaped error body.
    pub fn error_status(mut self, status: u16, message: &str) -> ChatScript {
        self.status = status;
        self.error_message = message.into();
        self
    }

    /// Leaves `usage` out (the gateway must look the cost up).
    pub fn no_usage(mut self) -> ChatScript {
        self.usage = false;
        self
    }

    /// Ends the stream with an error event.
    pub fn mid_stream_error(mut self, code: u16, message: &str) -> ChatScript {
        self.end = StreamEnd::MidStreamError {
            code,
            message: message.into(),
        };
        self
    }

    /// Cuts the connection after the content events.
    pub fn cut(mut self) -> ChatScript {
        self.end = StreamEnd::Cut;
        self
    }

    /// Holds the response at `gate` (see [`ChatScript::hold`]).
    pub fn hold(mut self, gate: &Gate) -> ChatScript {
        self.hold = Some(gate.clone());
        self
    }

    /// Pauses `delay` between SSE events.
    pub fn event_delay(mut self, delay: Duration) -> ChatScript {
        self.event_delay = delay;
        self
    }

    /// Pauses `delay` before the response headers.
    pub fn response_delay(mut self, delay: Duration) -> ChatScript {
        self.response_delay = delay;
        self
    }

    /// Answers as if `model` served the request (the `model` of the body, every SSE chunk and
    /// the generation record), whatever the request asked for.
    pub fn served_model(mut self, model: &str) -> ChatScript {
        self.routed_model = Some(model.into());
        self
    }

    /// Answers as if `provider` served the request.
    pub fn served_provider(mut self, provider: &str) -> ChatScript {
        self.provider = provider.into();
        self
    }

    /// Sets the content pieces.
    pub fn content(mut self, pieces: &[&str]) -> ChatScript {
        self.content = pieces.iter().map(|p| p.to_string()).collect();
        self
    }
}

/// How `POST /api/v1/embeddings` answers.
#[derive(Clone, Debug)]
pub struct EmbeddingsScript {
    /// `usage.cost` in USD.
    pub cost: f64,
    /// `usage.prompt_tokens` (and `total_tokens`).
    pub prompt_tokens: u64,
}

impl Default for EmbeddingsScript {
    fn default() -> EmbeddingsScript {
        EmbeddingsScript {
            cost: 0.00002,
            prompt_tokens: 8,
        }
    }
}

/// How `GET /api/v1/generation?id=X` answers.
#[derive(Clone, Debug, Default)]
pub struct GenerationScript {
    /// The first `misses` lookups of each id get 404 (the record appears seconds later upstream).
    pub misses: u32,
    /// `total_cost` to report; default: what the generation cost (or 0.0042 for an unknown id).
    pub cost: Option<f64>,
}

/// The workspace `GET /api/v1/workspaces/{id}` describes.
#[derive(Clone, Debug, Default)]
pub struct WorkspaceScript {
    /// `is_observability_io_logging_enabled`.
    pub io_logging: bool,
    /// `is_observability_broadcast_enabled`.
    pub broadcast: bool,
    /// `is_data_discount_logging_enabled`.
    pub data_discount: bool,
    /// Answer 500 instead (to make the gateway's view go stale).
    pub fail: bool,
    /// Record each read, then leave it unanswered while this stays set (a slow management API).
    pub hold: bool,
}

/// The bearer token `GET /api/v1/workspaces/{id}` requires.
pub const MANAGEMENT_KEY: &str = "sk-or-mgmt-fake-0123456789";

/// The default `GET /api/v1/models` list: real ids with OpenRouter-shaped pricing strings.
pub fn default_models() -> Vec<Value> {
    vec![
        model_entry(
            "openai/gpt-4o-mini",
            "0.00000015",
            "0.0000006",
            128_000,
            16_384,
        ),
        model_entry(
            "anthropic/claude-3.5-haiku",
            "0.0000008",
            "0.000004",
            200_000,
            8_192,
        ),
        model_entry(
            "meta-llama/llama-3.1-8b-instruct",
            "0.00000002",
            "0.00000005",
            131_072,
            8_192,
        ),
    ]
}

/// One `GET /api/v1/models` entry.
pub fn model_entry(
    id: &str,
    prompt: &str,
    completion: &str,
    context_length: u64,
    max_completion_tokens: u64,
) -> Value {
    json!({
        "id": id,
        "name": id,
        "context_length": context_length,
        "pricing": {"prompt": prompt, "completion": completion, "request": "0", "image": "0"},
        "top_provider": {
            "context_length": context_length,
            "max_completion_tokens": max_completion_tokens,
            "is_moderated": false
        }
    })
}

/// A one-shot latch: closed until [`Gate::open`], then open for good.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }

    /// Opens the gate (idempotent).
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the gate is open.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_round_trips_exactly() {
        assert_eq!(usd_to_pico("0.00001"), 10_000_000);
        assert_eq!(usd_to_pico("1"), 1_000_000_000_000);
        assert_eq!(usd_to_pico("0.0000006"), 600_000);
        assert_eq!(pico_to_f64(50 * 10_000_000).to_string(), "0.0005");
        assert_eq!(
            serde_json::to_string(&pico_to_f64(100 * 10_000_000)).unwrap(),
            "0.001"
        );
    }
}
