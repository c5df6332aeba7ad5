//! `[intercept.models]`: which model ids a request may name. Globs over model ids, deny wins, and
//! ids that route somewhere the policy cannot see (routers, presets, `:variants`) only when they
//! are allowed by their exact name.

use std::fmt;

/// The longest model id or pattern accepted; real ids are well under 100 characters.
const MAX_LEN: usize = 256;

/// A model id pattern from `allow` or `deny`: `*` matches any run of characters (`/` included),
/// `?` exactly one; everything else matches itself, ignoring ASCII case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPattern {
    /// Lowercased.
    text: String,
}

impl ModelPattern {
    /// Reads a pattern; refuses empty ones, whitespace, control characters and commas (a comma
    /// means a list was written as one string).
    pub fn parse(text: &str) -> Result<ModelPattern, String> {
        if text.is_empty() {
            return Err("expected a model id or pattern such as \"openai/*\", found \"\"".into());
        }
        if text.len() > MAX_LEN {
            return Err(format!(
                "expected a model id or pattern of at most {MAX_LEN} characters"
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == ',')
        {
            return Err(format!(
                "expected a model id or pattern without spaces or commas, found {c:?} in {text:?}"
            ));
        }
        Ok(ModelPattern {
            text: text.to_ascii_lowercase(),
        })
    }

    /// Whether the pattern has no wildcard, i.e. names exactly one model.
    pub fn is_exact(&self) -> bool {
        !self.text.contains(['*', '?'])
    }

    /// Whether `model` matches, ignoring ASCII case.
    pub fn matches(&self, model: &str) -> bool {
        glob(self.text.as_bytes(), model.to_ascii_lowercase().as_bytes())
    }
}

impl fmt::Display for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Iterative wildcard match with one backtrack point (linear in practice, never exponential).
/// Bytes, not chars: `?` then matches one byte, which only differs from a character for non-ASCII
/// ids, and those are never plain model ids anyway.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None; // (pattern index after `*`, text index it resumes at)
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, t));
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Why a model id is not a plain `vendor/model`, and so must be allowed by its exact name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliasKind {
    /// `openrouter/...` (`openrouter/auto` and the other router ids): the served model is chosen
    /// upstream, so neither the model rules nor the price can be checked.
    Router,
    /// `@preset/...`: a server-side preset that may pick models and parameters.
    Preset,
    /// `vendor/model:suffix` (`:online`, `:nitro`, `:free`...): changes routing, price or tools.
    Variant,
    /// Anything else that is not `vendor/model` in lowercase letters, digits, `.`, `_`, `-`.
    Unusual,
}

impl AliasKind {
    /// Classifies a lowercased model id; `None` for a plain `vendor/model`.
    fn of(model: &str) -> Option<AliasKind> {
        if model.starts_with('@') {
            return Some(AliasKind::Preset);
        }
        if model.starts_with("openrouter/") {
            return Some(AliasKind::Router);
        }
        if model.contains(':') {
            return Some(AliasKind::Variant);
        }
        let plain_part = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        };
        match model.split_once('/') {
            Some((vendor, name)) if plain_part(vendor) && plain_part(name) => None,
            _ => Some(AliasKind::Unusual),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            AliasKind::Router => "a routing alias",
            AliasKind::Preset => "a preset",
            AliasKind::Variant => "a :variant",
            AliasKind::Unusual => "not a plain vendor/model id",
        }
    }
}

/// Why a model was refused; `Display` names the model (the 403 body says it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelDenied {
    /// Empty, too long, or containing whitespace or control characters.
    #[error("model id {model:?} is malformed")]
    Malformed {
        /// The id as the request wrote it.
        model: String,
    },
    /// Matched a `deny` pattern (itself, or its base id without the `:suffix`).
    #[error("model {model:?} is denied by the policy pattern {pattern:?}")]
    Denied {
        /// The id as the request wrote it.
        model: String,
        /// The deny pattern that matched, lowercased.
        pattern: String,
    },
    /// A router, preset, variant or unusual id that `allow` does not name exactly.
    #[error("model {model:?} is {}; the policy must allow it by its exact name", kind.describe())]
    NotNamed {
        /// The id as the request wrote it.
        model: String,
        /// What kind of id it is.
        kind: AliasKind,
    },
    /// No `allow` pattern matched.
    #[error("model {model:?} is not allowed by the policy")]
    NotAllowed {
        /// The id as the request wrote it.
        model: String,
    },
}

impl ModelDenied {
    /// A bounded label for logs and metrics (`tollgate_llm_denials_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ModelDenied::Malformed { .. } => "model_malformed",
            ModelDenied::Denied { .. } => "model_denied",
            ModelDenied::NotNamed { .. } => "model_not_named",
            ModelDenied::NotAllowed { .. } => "model_not_allowed",
        }
    }

    /// The model id as the request wrote it.
    pub fn model(&self) -> &str {
        match self {
            ModelDenied::Malformed { model }
            | ModelDenied::Denied { model, .. }
            | ModelDenied::NotNamed { model, .. }
            | ModelDenied::NotAllowed { model } => model,
        }
    }
}

/// The compiled `[intercept.models]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPolicy {
    /// Models a request may name (default `["*"]`).
    pub allow: Vec<ModelPattern>,
    /// Models never allowed, checked first (default none; `RESTRICTED_MODELS` adds to it).
    pub deny: Vec<ModelPattern>,
}

impl Default for ModelPolicy {
    fn default() -> Self {
        ModelPolicy {
            allow: vec![ModelPattern {
                text: "*".to_owned(),
            }],
            deny: Vec::new(),
        }
    }
}

impl ModelPolicy {
    /// Decides one model id (from `model` or one entry of `models`). In order: malformed ids are
    /// refused; `deny` wins (a pattern that matches the id or its base id before `:` refuses it);
    /// routers, presets, variants and unusual ids need an exact `allow` entry; then any `allow`
    /// pattern admits it.
    pub fn check(&self, model: &str) -> Result<(), ModelDenied> {
        let malformed = model.is_empty()
            || model.len() > MAX_LEN
            || model.chars().any(|c| c.is_whitespace() || c.is_control());
        if malformed {
            return Err(ModelDenied::Malformed {
                model: model.to_owned(),
            });
        }
        let id = model.to_ascii_lowercase();
        let base = id.split_once(':').map(|(base, _)| base);
        let denied = self.deny.iter().find(|p| {
            glob(p.text.as_bytes(), id.as_bytes())
                || base.is_some_and(|b| glob(p.text.as_bytes(), b.as_bytes()))
        });
        if let Some(pattern) = denied {
            return Err(ModelDenied::Denied {
                model: model.to_owned(),
                pattern: pattern.text.clone(),
            });
        }
        if let Some(kind) = AliasKind::of(&id) {
            return if self.allow.iter().any(|p| p.is_exact() && p.text == id) {
                Ok(())
            } else {
                Err(ModelDenied::NotNamed {
                    model: model.to_owned(),
                    kind,
                })
            };
        }
        if self
            .allow
            .iter()
            .any(|p| glob(p.text.as_bytes(), id.as_bytes()))
        {
            Ok(())
        } else {
            Err(ModelDenied::NotAllowed {
                model: model.to_owned(),
            })
        }
    }

    /// Checks every model a request names (`model`, then each entry of `models`); the first
    /// refusal wins.
    pub fn check_all<'a>(
        &self,
        models: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ModelDenied> {
        models.into_iter().try_for_each(|m| self.check(m))
    }
}
