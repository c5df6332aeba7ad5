//! `[intercept.budget]` and `[intercept.pricing]`: money, always as integers (micro-USD for the
//! budget, pico-USD per token for prices), read exactly from decimal text.

use toml::Spanned;

use crate::compile::{duration, optional, positive, usd};
use crate::error::{PolicyError, Source};
use crate::gateway::{BudgetSettings, Price, PricingSettings, parse};
use crate::money::{Micros, UnitPrice};
use crate::raw::{RawBudget, RawPrice, RawPricing};

/// Compiles `[intercept.budget]`.
pub(super) fn budget(src: Source<'_>, raw: &RawBudget) -> Result<BudgetSettings, PolicyError> {
    let defaults = BudgetSettings::default();
    let refusal_status = match &raw.refusal_status {
        Some(status) => match status.get_ref() {
            429 => 429,
            402 => 402,
            other => {
                return Err(src.error(
                    status.span(),
                    "intercept.budget.refusal_status",
                    format!("expected 429 or 402, found {other}"),
                ));
            }
        },
        None => defaults.refusal_status,
    };
    Ok(BudgetSettings {
        max_cost_micros: raw
            .max_cost_usd
            .as_ref()
            .map(|v| usd(src, "intercept.budget.max_cost_usd", v, Micros::parse_usd))
            .transpose()?,
        refusal_status,
        min_completion_tokens: match &raw.min_completion_tokens {
            Some(v) => positive(src, "intercept.budget.min_completion_tokens", v, 1_000_000)?.get(),
            None => defaults.min_completion_tokens,
        },
        evaluation_run_id: optional(
            src,
            "intercept.budget.evaluation_run_id",
            raw.evaluation_run_id.as_ref(),
            parse::run_id,
        )?
        .unwrap_or(defaults.evaluation_run_id),
        data_dir: optional(
            src,
            "intercept.budget.data_dir",
            raw.data_dir.as_ref(),
            parse::absolute_path,
        )?
        .unwrap_or(defaults.data_dir),
    })
}

/// Compiles `[intercept.pricing]`.
pub(super) fn pricing(src: Source<'_>, raw: &RawPricing) -> Result<PricingSettings, PolicyError> {
    let defaults = PricingSettings::default();
    let mut models = std::collections::BTreeMap::new();
    for t in super::requests::model_tables(src, "intercept.pricing.models", &raw.models)? {
        models.insert(t.id, price(src, &t.key, t.table.get_ref())?);
    }
    Ok(PricingSettings {
        fetch: raw.fetch.unwrap_or(defaults.fetch),
        refresh: duration(
            src,
            "intercept.pricing.refresh",
            raw.refresh.as_ref(),
            defaults.refresh,
        )?,
        fallback: raw
            .fallback
            .as_ref()
            .map(|p| price(src, "intercept.pricing.fallback", p))
            .transpose()?,
        models,
    })
}

/// USD per unit → pico-USD per unit, exactly; `prompt` and `completion` are required (serde
/// refuses a table without them), the rest default to 0.
fn price(src: Source<'_>, key: &str, raw: &RawPrice) -> Result<Price, PolicyError> {
    let one = |name: &str, value: &Spanned<toml::Value>| {
        usd(src, &format!("{key}.{name}"), value, UnitPrice::parse_usd)
    };
    let maybe = |name: &str, value: &Option<Spanned<toml::Value>>| {
        value.as_ref().map_or(Ok(UnitPrice::ZERO), |v| one(name, v))
    };
    Ok(Price {
        prompt: one("prompt", &raw.prompt)?,
        completion: one("completion", &raw.completion)?,
        request: maybe("request", &raw.request)?,
        image: maybe("image", &raw.image)?,
        reasoning: maybe("reasoning", &raw.reasoning)?,
    })
}
