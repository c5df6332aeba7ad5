//! The served-model check: OpenRouter names the model and provider that actually answered (the
//! `model` and `provider` of the JSON body and of SSE chunks, or the generation record). A silent
//! fallback or substitution invalidates a score, so the answer is checked against the same rules
//! the request was: the model against `[intercept.models]`, the provider against a forced `order`
//! when `allow_fallbacks = false`.

use tollgate_policy::GatewaySettings;

use super::Reason;

/// What broke the policy: the `tollgate_llm_served_violations_total{kind}` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServedKind {
    /// A served model the allow/deny rules refuse.
    Model,
    /// A provider outside the forced `order` (with `allow_fallbacks = false`).
    Provider,
}

impl ServedKind {
    /// Every kind, for pre-creating label sets.
    pub const ALL: [ServedKind; 2] = [ServedKind::Model, ServedKind::Provider];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedKind::Model => "model",
            ServedKind::Provider => "provider",
        }
    }
}

/// A served model or provider the policy refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Model or provider.
    pub kind: ServedKind,
    /// Why, for the log line and the agent's error.
    pub message: String,
}

impl Violation {
    /// The reason withholding it gives (also the request line's `violation`).
    pub fn reason(&self) -> Reason {
        match self.kind {
            ServedKind::Model => Reason::ServedModelViolation,
            ServedKind::Provider => Reason::ServedProviderViolation,
        }
    }

    /// The request line's `violation` value.
    pub fn as_str(&self) -> &'static str {
        self.reason().as_str()
    }
}

/// Checks what served a request for `requested` (the ledger's model, whose provider preferences
/// were forced); an unknown model or provider is not a violation (nothing named it).
pub fn check_served(
    settings: &GatewaySettings,
    requested: &str,
    model: Option<&str>,
    provider: Option<&str>,
) -> Option<Violation> {
    if let Some(model) = model
        && let Err(denied) = settings.models.check(model)
    {
        return Some(Violation {
            kind: ServedKind::Model,
            message: format!("served by model {model:?}: {denied}"),
        });
    }
    let prefs = settings.provider.for_model(requested);
    let provider = provider?;
    if prefs.allow_fallbacks || prefs.order.is_empty() {
        return None;
    }
    // OpenRouter's `order` takes slugs (`google-vertex`, `deepinfra/turbo`) while responses name
    // providers (`Google Vertex`, `DeepInfra`): compare letters and digits only, any case, and
    // a slug's variant suffix may be absent.
    let served = squash(provider);
    let listed = prefs.order.iter().any(|slug| {
        let base = slug.split_once('/').map_or(slug.as_str(), |(b, _)| b);
        squash(slug) == served || squash(base) == served
    });
    (!listed).then(|| Violation {
        kind: ServedKind::Provider,
        message: format!(
            "served by provider {provider:?}, outside the forced order [{}] (allow_fallbacks = false)",
            prefs.order.join(", ")
        ),
    })
}

fn squash(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> GatewaySettings {
        tollgate_policy::Policy::parse(toml, "test.toml")
            .expect("valid policy")
            .gateway
    }

    #[test]
    fn model_and_provider_checked_against_the_policy() {
        let g = settings(
            r#"version = 1
[intercept]
hosts = ["openrouter.ai"]
[intercept.models]
allow = ["openai/*"]
deny = ["openai/o1*"]
[intercept.provider]
order = ["openai", "google-vertex/us"]
allow_fallbacks = false
"#,
        );
        let check = |m, p| check_served(&g, "openai/gpt-4o", m, p).map(|v| v.kind);
        assert_eq!(check(Some("openai/gpt-4o"), Some("OpenAI")), None);
        assert_eq!(check(Some("openai/gpt-4o"), Some("Google Vertex")), None);
        assert_eq!(check(None, None), None);
        assert_eq!(check(Some("openai/o1-mini"), None), Some(ServedKind::Model));
        assert_eq!(
            check(Some("anthropic/claude-3"), Some("OpenAI")),
            Some(ServedKind::Model)
        );
        assert_eq!(
            check(Some("openai/gpt-4o"), Some("Azure")),
            Some(ServedKind::Provider)
        );
    }

    #[test]
    fn fallbacks_allowed_means_any_provider() {
        let g = settings(
            r#"version = 1
[intercept]
hosts = ["openrouter.ai"]
[intercept.provider]
order = ["openai"]
"#,
        );
        assert_eq!(
            check_served(&g, "openai/gpt-4o", Some("x/y"), Some("Azure")),
            None
        );
    }
}
