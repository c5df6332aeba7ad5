//! The APIs the gateway can forward (`endpoints`), their methods and paths, and each one's default
//! field allowlist (`[intercept.fields]`).

use std::collections::BTreeSet;
use std::fmt;

/// An API the gateway can forward, with its method and path on the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `POST /api/v1/chat/completions`
    Chat,
    /// `POST /api/v1/embeddings`
    Embeddings,
    /// `POST /api/v1/completions` (legacy text completions)
    Completions,
    /// `POST /api/v1/responses` (OpenAI Responses API)
    Responses,
    /// `POST /api/v1/messages` (Anthropic Messages API)
    Messages,
    /// `GET /api/v1/models` (the model list; free, no body)
    Models,
}

impl Endpoint {
    /// Every endpoint, in the order the README lists them.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Chat,
        Endpoint::Embeddings,
        Endpoint::Completions,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::Models,
    ];

    /// The name used in the policy (`endpoints`, `[intercept.fields]`) and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::Models => "models",
        }
    }

    /// `"POST"` or `"GET"`.
    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Models => "GET",
            _ => "POST",
        }
    }

    /// The request path, without query.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/api/v1/chat/completions",
            Endpoint::Embeddings => "/api/v1/embeddings",
            Endpoint::Completions => "/api/v1/completions",
            Endpoint::Responses => "/api/v1/responses",
            Endpoint::Messages => "/api/v1/messages",
            Endpoint::Models => "/api/v1/models",
        }
    }

    /// Whether requests carry a JSON body (and so a model, fields and a cost).
    pub fn has_body(self) -> bool {
        self != Endpoint::Models
    }

    /// The endpoint a policy name stands for.
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The endpoint a request is for: exact method and path (query already removed), else `None`.
    pub fn from_request(method: &str, path: &str) -> Option<Endpoint> {
        Endpoint::ALL
            .into_iter()
            .find(|e| e.method() == method && e.path() == path)
    }

    /// The default `[intercept.fields]` allowlist for this endpoint (empty for `models`).
    pub fn default_fields(self) -> &'static [&'static str] {
        match self {
            // chat and embeddings: the reference's lists.
            Endpoint::Chat => &[
                "model",
                "models",
                "messages",
                "temperature",
                "top_p",
                "max_tokens",
                "stream",
                "tools",
                "tool_choice",
                "frequency_penalty",
                "presence_penalty",
                "stop",
                "n",
                "response_format",
                "seed",
            ],
            Endpoint::Embeddings => &["model", "models", "input", "encoding_format", "dimensions"],
            // The chat list's sampling fields, with `prompt` for `messages`.
            Endpoint::Completions => &[
                "model",
                "models",
                "prompt",
                "temperature",
                "top_p",
                "max_tokens",
                "stream",
                "frequency_penalty",
                "presence_penalty",
                "stop",
                "n",
                "seed",
            ],
            // The Responses API's names: `input`, `instructions`, `max_output_tokens`, `text`.
            Endpoint::Responses => &[
                "model",
                "input",
                "instructions",
                "temperature",
                "top_p",
                "max_output_tokens",
                "stream",
                "tools",
                "tool_choice",
                "text",
            ],
            // The Messages API's names: `system`, `stop_sequences`, `top_k`.
            Endpoint::Messages => &[
                "model",
                "messages",
                "system",
                "max_tokens",
                "temperature",
                "top_p",
                "top_k",
                "stop_sequences",
                "stream",
                "tools",
                "tool_choice",
            ],
            Endpoint::Models => &[],
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The endpoints the gateway forwards; every other request is refused with 403.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSet(pub BTreeSet<Endpoint>);

impl EndpointSet {
    /// Whether `endpoint` is enabled.
    pub fn contains(&self, endpoint: Endpoint) -> bool {
        self.0.contains(&endpoint)
    }

    /// The enabled endpoints, in [`Endpoint::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.0.iter().copied()
    }
}

impl Default for EndpointSet {
    /// `chat` and `embeddings`, as the reference.
    fn default() -> Self {
        EndpointSet([Endpoint::Chat, Endpoint::Embeddings].into_iter().collect())
    }
}
