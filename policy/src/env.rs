//! The reference sidecar's environment variables, applied over a compiled policy. The environment
//! is read through a closure (`&dyn Fn(&str) -> Option<String>`) so tests need no process
//! environment; `Policy::apply_process_env` is the real one.
//!
//! A variable set to the empty string (or only whitespace) counts as unset, as a Kubernetes
//! manifest's `value: ""` usually means "not configured". Values are trimmed. Errors name the
//! variable (`key` = `env NAME`, no line) and leave the policy unchanged.

use crate::error::PolicyError;
use crate::gateway::{GatewaySettings, KeySource, ModelPattern, parse};
use crate::money::Micros;
use crate::policy::Policy;

/// Applies one variable's (trimmed, non-empty) value; the message says what was expected.
type Apply = fn(&mut GatewaySettings, &str) -> Result<(), String>;

/// Each variable and what it does, in the order they are applied.
const OVERRIDES: [(&str, Apply); 10] = [
    ("MAX_COST_USD", |g, v| {
        let micros = Micros::parse_usd(v).map_err(|e| format!("{e}, found {v:?}"))?;
        g.budget.max_cost_micros = Some(micros);
        Ok(())
    }),
    ("EVALUATION_RUN_ID", |g, v| {
        g.budget.evaluation_run_id = parse::run_id(v)?;
        Ok(())
    }),
    ("RESTRICTED_MODELS", |g, v| {
        // Added to the file's deny list: the variable can only narrow the policy.
        for entry in parse::comma_list(v) {
            let pattern = ModelPattern::parse(entry)?;
            if !g.models.deny.contains(&pattern) {
                g.models.deny.push(pattern);
            }
        }
        Ok(())
    }),
    ("PROVIDER_ORDER", |g, v| {
        let mut order: Vec<String> = Vec::new();
        for entry in parse::comma_list(v) {
            let provider = parse::provider(entry)?;
            if order.contains(&provider) {
                return Err(format!("duplicate provider {entry:?} in the list"));
            }
            order.push(provider);
        }
        g.provider.order = order;
        Ok(())
    }),
    ("PROVIDER_ALLOW_FALLBACKS", |g, v| {
        g.provider.allow_fallbacks = parse::bool_word(v)?;
        Ok(())
    }),
    ("OPENROUTER_MANAGEMENT_KEY", |g, _key| {
        // The value is the key itself: only its presence is used, and it is not kept.
        g.workspace.management_key = KeySource::Env("OPENROUTER_MANAGEMENT_KEY".to_owned());
        Ok(())
    }),
    ("OPENROUTER_WORKSPACE_ID", |g, v| {
        g.workspace.id = Some(parse::workspace_id(v)?);
        Ok(())
    }),
    ("OPENROUTER_EXPECTED_API_KEY_SHA256", |g, v| {
        g.auth.api_key_sha256 = Some(parse::sha256_hex(v)?);
        Ok(())
    }),
    ("UPSTREAM_BASE_URL", |g, v| {
        g.upstream = parse::upstream(v)?;
        Ok(())
    }),
    ("PROXY_DATA_DIR", |g, v| {
        g.budget.data_dir = parse::absolute_path(v)?;
        Ok(())
    }),
];

/// Every variable `Policy::apply_env` reads, in the order it applies them.
pub const ENV_VARS: [&str; OVERRIDES.len()] = {
    let mut names = [""; OVERRIDES.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = OVERRIDES[i].0;
        i += 1;
    }
    names
};

impl Policy {
    /// Applies the reference's environment variables over the file's settings (see the README's
    /// table). Either every variable applies or, on the first bad value, none does and the error
    /// names the variable. Records the names of the variables applied in
    /// `gateway.env_overrides`; secret values are never kept (for `OPENROUTER_MANAGEMENT_KEY`
    /// only its presence matters).
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), PolicyError> {
        let mut gateway = self.gateway.clone();
        for (name, apply) in OVERRIDES {
            let Some(value) = env(name) else { continue };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            apply(&mut gateway, value).map_err(|message| PolicyError {
                origin: self.origin.clone(),
                line: 0,
                column: 0,
                key: format!("env {name}"),
                message,
            })?;
            if !gateway.env_overrides.contains(&name) {
                gateway.env_overrides.push(name);
            }
        }
        self.gateway = gateway;
        Ok(())
    }

    /// `apply_env` with the process environment. A value that is not UTF-8 is read lossily, so it
    /// fails to parse (naming the variable) rather than being taken as unset.
    pub fn apply_process_env(&mut self) -> Result<(), PolicyError> {
        self.apply_env(&|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }
}
