//! `[intercept.models]`, `[intercept.provider]`, `[intercept.fields]`, `[intercept.limits]`: what
//! a forwarded request may contain, how it is routed upstream, and how many may go at once.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use crate::compile::{positive, unique_list};
use crate::error::{PolicyError, Source, key_segment};
use crate::gateway::{
    Endpoint, FieldAllowlists, LimitSettings, ModelPattern, ModelPolicy, ProviderOverride,
    ProviderSettings, parse,
};
use crate::raw::{RawFields, RawLimits, RawModels, RawProvider, RawProviderModel};

/// Compiles `[intercept.models]`.
pub(super) fn models(src: Source<'_>, raw: &RawModels) -> Result<ModelPolicy, PolicyError> {
    let patterns = |key: &str, items: &[Spanned<String>]| {
        unique_list(src, key, "pattern", items, ModelPattern::parse)
    };
    Ok(ModelPolicy {
        allow: match &raw.allow {
            Some(items) => patterns("intercept.models.allow", items)?,
            None => ModelPolicy::default().allow,
        },
        deny: patterns("intercept.models.deny", &raw.deny)?,
    })
}

/// Compiles `[intercept.provider]` and its per-model tables.
pub(super) fn provider(
    src: Source<'_>,
    raw: &RawProvider,
) -> Result<ProviderSettings, PolicyError> {
    let defaults = ProviderSettings::default();
    let mut per_model = BTreeMap::new();
    for t in model_tables(src, "intercept.provider.models", &raw.models)? {
        per_model.insert(t.id, provider_override(src, &t.key, t.table.get_ref())?);
    }
    Ok(ProviderSettings {
        order: match &raw.order {
            Some(items) => order(src, "intercept.provider.order", items)?,
            None => defaults.order,
        },
        allow_fallbacks: raw.allow_fallbacks.unwrap_or(defaults.allow_fallbacks),
        per_model,
    })
}

fn provider_override(
    src: Source<'_>,
    key: &str,
    raw: &RawProviderModel,
) -> Result<ProviderOverride, PolicyError> {
    Ok(ProviderOverride {
        order: raw
            .order
            .as_ref()
            .map(|items| order(src, &format!("{key}.order"), items))
            .transpose()?,
        allow_fallbacks: raw.allow_fallbacks,
    })
}

fn order(
    src: Source<'_>,
    key: &str,
    items: &[Spanned<String>],
) -> Result<Vec<String>, PolicyError> {
    unique_list(src, key, "provider", items, parse::provider)
}

/// One `[<table>.models."<id>"]` table.
pub(super) struct ModelTable<'r, T> {
    /// The model id, lowercased.
    pub id: String,
    /// The key path for errors, e.g. `intercept.pricing.models."openai/gpt-4o"`.
    pub key: String,
    pub table: &'r Spanned<T>,
}

/// The tables of a map keyed by exact model id, in file order. Ids differing only in case are
/// the same model, so a second one is refused.
pub(super) fn model_tables<'r, T>(
    src: Source<'_>,
    key: &str,
    raw: &'r BTreeMap<String, Spanned<T>>,
) -> Result<Vec<ModelTable<'r, T>>, PolicyError> {
    let mut tables: Vec<(&String, &Spanned<T>)> = raw.iter().collect();
    tables.sort_by_key(|(_, table)| table.span().start);
    let mut out: Vec<ModelTable<'r, T>> = Vec::with_capacity(tables.len());
    for (written, table) in tables {
        let table_key = format!("{key}.{}", key_segment(written));
        let id = parse::model_id(written).map_err(|m| src.error(table.span(), &table_key, m))?;
        if let Some(first) = out.iter().find(|seen| seen.id == id) {
            let message = format!(
                "duplicate model {written:?}, already listed at line {}",
                src.line(first.table.span().start)
            );
            return Err(src.error(table.span(), table_key, message));
        }
        out.push(ModelTable {
            id,
            key: table_key,
            table,
        });
    }
    Ok(out)
}

/// Compiles `[intercept.fields]`: a list replaces that endpoint's default.
pub(super) fn fields(src: Source<'_>, raw: &RawFields) -> Result<FieldAllowlists, PolicyError> {
    let mut lists = FieldAllowlists::default();
    let given = [
        (Endpoint::Chat, &raw.chat),
        (Endpoint::Embeddings, &raw.embeddings),
        (Endpoint::Completions, &raw.completions),
        (Endpoint::Responses, &raw.responses),
        (Endpoint::Messages, &raw.messages),
    ];
    for (endpoint, list) in given {
        if let Some(list) = list {
            lists.0.insert(endpoint, field_list(src, endpoint, list)?);
        }
    }
    Ok(lists)
}

fn field_list(
    src: Source<'_>,
    endpoint: Endpoint,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Result<BTreeSet<String>, PolicyError> {
    let key = format!("intercept.fields.{}", endpoint.name());
    let names = unique_list(src, &key, "field", list.get_ref(), field_name)?;
    if let Some(i) = names.iter().position(|n| n == "provider") {
        return Err(src.error(
            list.get_ref()[i].span(),
            format!("{key}[{i}]"),
            "expected fields the agent may set; `provider` is always replaced by the gateway",
        ));
    }
    if !names.iter().any(|n| n == "model") {
        return Err(src.error(
            list.span(),
            key,
            "expected the list to include \"model\": without it every request would be refused",
        ));
    }
    Ok(names.into_iter().collect())
}

/// A top-level JSON key.
fn field_name(text: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&text.len())
        && !text.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a json field name such as \"temperature\", found {text:?}"
        ))
    }
}

/// The largest rate or burst accepted; far beyond what one agent can send.
const MAX_RATE: u32 = 1_000_000;
/// The largest concurrency cap accepted.
const MAX_CONCURRENT: u32 = 100_000;

/// Compiles `[intercept.limits]`; `burst` defaults to twice the rate.
pub(super) fn limits(src: Source<'_>, raw: &RawLimits) -> Result<LimitSettings, PolicyError> {
    let defaults = LimitSettings::default();
    let get = |key: &str, value: &Option<Spanned<i64>>, max: u32| {
        value
            .as_ref()
            .map(|v| positive(src, key, v, max))
            .transpose()
    };
    let rate = get(
        "intercept.limits.requests_per_second",
        &raw.requests_per_second,
        MAX_RATE,
    )?;
    let burst = get("intercept.limits.burst", &raw.burst, MAX_RATE)?;
    let max_concurrent = get(
        "intercept.limits.max_concurrent",
        &raw.max_concurrent,
        MAX_CONCURRENT,
    )?;
    let requests_per_second = rate.unwrap_or(defaults.requests_per_second);
    Ok(LimitSettings {
        requests_per_second,
        burst: burst
            .unwrap_or_else(|| requests_per_second.saturating_add(requests_per_second.get())),
        max_concurrent: max_concurrent.unwrap_or(defaults.max_concurrent),
    })
}
