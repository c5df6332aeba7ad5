//! Why the gateway refuses a request: one [`Reason`] per cause (as rustls's `Error`), and the
//! [`Refusal`] that carries it with the status and the OpenRouter-shaped body, built by named
//! constructors for the refusals the gateway itself makes (as linkerd2-proxy's `errors::respond`).

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use serde_json::json;
use tollgate_policy::ModelDenied;

/// A refusal's cause: the `tollgate_llm_denials_total{reason}` label, the request line's `reason`
/// and the body's `error.metadata.tollgate_reason`. The README lists each (checked by
/// `proxy/tests/reasons_table.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `Host`/`:authority` names another host than the TLS session's SNI (421).
    Misdirected,
    /// Method and path not an endpoint the policy enables (403).
    Endpoint,
    /// No `Authorization: Bearer` token (401).
    Unauthenticated,
    /// The token is not the pinned key (403).
    ApiKey,
    /// Malformed request: Authorization header, `model` field, a field the estimate cannot read, a broken body (400).
    BadRequest,
    /// The body is not a JSON object (400).
    BadJson,
    /// No model named (400).
    NoModel,
    /// A model id that is not well-formed (403).
    ModelMalformed,
    /// A model the policy denies (403).
    ModelDenied,
    /// A model the policy does not name (403).
    ModelNotNamed,
    /// A model outside the allow list (403).
    ModelNotAllowed,
    /// The workspace's privacy settings not read yet (503).
    WorkspaceUnverified,
    /// The last good workspace read is too old (503).
    WorkspaceStale,
    /// A workspace logging or data-sharing flag is on (403).
    WorkspaceUnsafe,
    /// Over `requests_per_second` for the host (429, Retry-After).
    RateLimit,
    /// No concurrency slot freed within 30 s (429, Retry-After).
    Concurrency,
    /// A body that is not `application/json` (400).
    ContentType,
    /// A body over `max_body`, or too costly to check within the body budget (413).
    BodyTooLarge,
    /// The body budget is held by other requests (503, Retry-After).
    BodyBudget,
    /// The body did not arrive within `read_timeout` (408).
    SlowClient,
    /// No price known for the model (status from the price error).
    NoPrice,
    /// Media whose cost the estimate cannot bound (400).
    UnboundedMedia,
    /// The worst case does not fit the remaining budget (`refusal_status`, 429 by default).
    Budget,
    /// The ledger could not journal the reservation (503).
    Ledger,
    /// The gateway could not build the forwarded request (500).
    Internal,
    /// The upstream failed or timed out (502, 504): not a refusal, so not counted in
    /// `tollgate_llm_denials_total` (a metered request is still settled).
    Upstream,
    /// The response was served by a model the policy refuses; withheld (502). Counted in
    /// `tollgate_llm_served_violations_total`, not in the denials (it was forwarded and settled).
    ServedModelViolation,
    /// The response was served by a provider outside a forced `order` with
    /// `allow_fallbacks = false`; withheld (502), counted as above.
    ServedProviderViolation,
}

impl Reason {
    /// Every reason, in the README's order.
    pub const ALL: [Reason; 28] = [
        Reason::Misdirected,
        Reason::Endpoint,
        Reason::Unauthenticated,
        Reason::ApiKey,
        Reason::BadRequest,
        Reason::BadJson,
        Reason::NoModel,
        Reason::ModelMalformed,
        Reason::ModelDenied,
        Reason::ModelNotNamed,
        Reason::ModelNotAllowed,
        Reason::WorkspaceUnverified,
        Reason::WorkspaceStale,
        Reason::WorkspaceUnsafe,
        Reason::RateLimit,
        Reason::Concurrency,
        Reason::ContentType,
        Reason::BodyTooLarge,
        Reason::BodyBudget,
        Reason::SlowClient,
        Reason::NoPrice,
        Reason::UnboundedMedia,
        Reason::Budget,
        Reason::Ledger,
        Reason::Internal,
        Reason::Upstream,
        Reason::ServedModelViolation,
        Reason::ServedProviderViolation,
    ];

    /// The label, log value and `tollgate_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Misdirected => "misdirected",
            Reason::Endpoint => "endpoint",
            Reason::Unauthenticated => "unauthenticated",
            Reason::ApiKey => "api-key",
            Reason::BadRequest => "bad-request",
            Reason::BadJson => "bad-json",
            Reason::NoModel => "no-model",
            Reason::ModelMalformed => "model_malformed",
            Reason::ModelDenied => "model_denied",
            Reason::ModelNotNamed => "model_not_named",
            Reason::ModelNotAllowed => "model_not_allowed",
            Reason::WorkspaceUnverified => "workspace-unverified",
            Reason::WorkspaceStale => "workspace-stale",
            Reason::WorkspaceUnsafe => "workspace-unsafe",
            Reason::RateLimit => "rate-limit",
            Reason::Concurrency => "concurrency",
            Reason::ContentType => "content-type",
            Reason::BodyTooLarge => "body-too-large",
            Reason::BodyBudget => "body-budget",
            Reason::SlowClient => "slow-client",
            Reason::NoPrice => "no-price",
            Reason::UnboundedMedia => "unbounded-media",
            Reason::Budget => "budget",
            Reason::Ledger => "ledger",
            Reason::Internal => "internal",
            Reason::Upstream => "upstream",
            Reason::ServedModelViolation => "served-model-violation",
            Reason::ServedProviderViolation => "served-provider-violation",
        }
    }
}

impl From<&ModelDenied> for Reason {
    fn from(denied: &ModelDenied) -> Self {
        match denied {
            ModelDenied::Malformed { .. } => Reason::ModelMalformed,
            ModelDenied::Denied { .. } => Reason::ModelDenied,
            ModelDenied::NotNamed { .. } => Reason::ModelNotNamed,
            ModelDenied::NotAllowed { .. } => Reason::ModelNotAllowed,
        }
    }
}

/// A request the gateway will not forward, with the status and OpenRouter-shaped body to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Bounded reason, for `tollgate_llm_denials_total{reason}` and the request log line.
    pub reason: Reason,
    /// What the agent is told.
    pub message: String,
    /// Seconds for a Retry-After header (rate limits only).
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal without Retry-After.
    pub fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `Host`/`:authority` is not the host the TLS session was for.
    pub fn misdirected(sni: &str) -> Self {
        Self::new(
            StatusCode::MISDIRECTED_REQUEST,
            Reason::Misdirected,
            format!("this connection serves {sni} only"),
        )
    }

    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Reason::BadRequest, message)
    }

    /// Over the host's request rate: retry after `wait_secs` (at least 1).
    pub fn rate_limited(wait_secs: u64) -> Self {
        let mut r = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            Reason::RateLimit,
            "request rate limit exceeded",
        );
        r.retry_after = Some(wait_secs.max(1));
        r
    }

    /// No concurrency slot freed in time.
    pub fn no_slot() -> Self {
        let mut r = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            Reason::Concurrency,
            "too many concurrent requests; no slot freed in time",
        );
        r.retry_after = Some(1);
        r
    }

    /// A body that is not JSON.
    pub fn not_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Reason::ContentType,
            "request body must be application/json",
        )
    }

    /// A body over `max_body` bytes.
    pub fn body_too_large(max_body: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            format!("request body larger than {max_body} bytes"),
        )
    }

    /// The body budget is held by other requests.
    pub fn body_budget_busy() -> Self {
        let mut r = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::BodyBudget,
            "too many request bodies in flight; retry shortly",
        );
        r.retry_after = Some(1);
        r
    }

    /// The body did not arrive within the read timeout.
    pub fn slow_client() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            Reason::SlowClient,
            "request body was not received in time",
        )
    }

    /// The gateway failed on its side.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Reason::Internal,
            format!("tollgate: {error}"),
        )
    }

    /// The upstream failed or timed out (`status` 502 or 504).
    pub fn upstream(status: StatusCode, message: &str) -> Self {
        Self::new(status, Reason::Upstream, message)
    }

    /// A response withheld because the model or provider that served it breaks the policy (502:
    /// the upstream answered, but not with what the policy allows).
    pub fn served_violation(violation: &super::Violation) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            violation.reason(),
            format!("response withheld: {}", violation.message),
        )
    }

    /// The error object OpenRouter would send, as a response body or an SSE event's data.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "code": self.status.as_u16(),
                "message": self.message,
                "metadata": { "tollgate_reason": self.reason.as_str() },
            }
        })
    }

    /// The response: `{"error":{"code":N,"message":"...","metadata":{"tollgate_reason":"..."}}}`.
    pub fn response(&self) -> http::Response<Full<Bytes>> {
        let body = self.body();
        let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
