//! [`Cost::Billed`](super::Cost::Billed): what a real OpenRouter could charge for a chat request,
//! worked out from the forwarded body and the fake's model list (see [`Billing`]).

use serde_json::Value;

use super::script::{Billing, ProviderPrice, usd_to_pico};

/// One request's bill.
pub(super) struct Bill {
    /// The provider routing picked.
    pub provider: String,
    /// Prompt tokens billed (per choice).
    pub prompt_tokens: u64,
    /// Completion tokens billed (per choice).
    pub completion_tokens: u64,
    /// The whole cost, pico-USD.
    pub pico: u64,
}

/// Prices in pico-USD per unit.
struct Prices {
    name: String,
    prompt: u128,
    completion: u128,
    request: u128,
    image: u128,
}

impl Prices {
    fn from(p: &ProviderPrice) -> Prices {
        Prices {
            name: p.name.clone(),
            prompt: u128::from(usd_to_pico(&p.prompt)),
            completion: u128::from(usd_to_pico(&p.completion)),
            request: u128::from(usd_to_pico(&p.request)),
            image: u128::from(usd_to_pico(&p.image)),
        }
    }
}

/// Bills `body` (forwarded as `body_len` bytes) for `model` from the list `models`; an error is
/// the (status, message) OpenRouter would answer.
pub(super) fn bill(
    billing: &Billing,
    model: &str,
    body: &Value,
    body_len: usize,
    models: &[Value],
) -> Result<Bill, (u16, String)> {
    let entry = models
        .iter()
        .find(|m| m["id"].as_str() == Some(model))
        .ok_or_else(|| (404, format!("{model} is not a valid model ID")))?;
    let context = entry["context_length"].as_u64().unwrap_or(u64::MAX);
    let providers: Vec<Prices> = if billing.providers.is_empty() {
        let p = &entry["pricing"];
        let field = |k: &str| p[k].as_str().unwrap_or("0").to_owned();
        vec![Prices::from(&ProviderPrice {
            name: "ListPrice".into(),
            prompt: field("prompt"),
            completion: field("completion"),
            request: field("request"),
            image: field("image"),
        })]
    } else {
        billing.providers.iter().map(Prices::from).collect()
    };

    let (text_less, images, fetched) = media(body);
    let prompt = (body_len as u64)
        .saturating_sub(text_less)
        .saturating_add(images.inline * billing.image_tokens)
        .saturating_add((fetched + images.remote) * billing.remote_tokens)
        .min(context);
    let completion = ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|k| body[*k].as_i64().filter(|t| *t > 0))
        .max()
        .map(|t| t as u64)
        .unwrap_or_else(|| {
            entry["top_provider"]["max_completion_tokens"]
                .as_u64()
                .unwrap_or(context)
        });
    let n = u128::from(body["n"].as_u64().unwrap_or(1).max(1));

    let max_price = &body["provider"]["max_price"];
    let mut best: Option<(u128, &Prices)> = None;
    for p in &providers {
        if !allowed(p, max_price)? {
            continue;
        }
        let one = p.request
            + p.image * u128::from(images.inline + images.remote)
            + p.prompt * u128::from(prompt)
            + p.completion * u128::from(completion);
        let total = one * n;
        if best.is_none_or(|(b, _)| total > b) {
            best = Some((total, p));
        }
    }
    let (pico, p) = best.ok_or_else(|| {
        (
            404,
            "No allowed providers are available for the selected model (max_price)".to_owned(),
        )
    })?;
    Ok(Bill {
        provider: p.name.clone(),
        prompt_tokens: prompt,
        completion_tokens: completion,
        pico: u64::try_from(pico).unwrap_or(u64::MAX),
    })
}

/// Whether `p` charges no more than `max_price` (`prompt`/`completion` in USD per million
/// tokens, `request`/`image` in USD); a malformed limit is a 400.
fn allowed(p: &Prices, max_price: &Value) -> Result<bool, (u16, String)> {
    let Value::Object(limits) = max_price else {
        return Ok(true);
    };
    for (key, limit) in limits {
        let limit = pico(limit).ok_or_else(|| (400, format!("invalid max_price.{key}")))?;
        let price = match key.as_str() {
            "prompt" => p.prompt * 1_000_000,
            "completion" => p.completion * 1_000_000,
            "request" => p.request,
            "image" => p.image,
            _ => continue,
        };
        if price > limit {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A non-negative USD decimal (string or number) in pico-USD; `None` when malformed.
fn pico(v: &Value) -> Option<u128> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if frac.len() > 12
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || int.is_empty() && frac.is_empty()
    {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_val: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    Some(int * 1_000_000_000_000 + frac_val * 10u128.pow(12 - frac.len() as u32))
}

#[derive(Default)]
struct Images {
    inline: u64,
    remote: u64,
}

/// Media in the parts of `messages[].content`: (inline image bytes that are not text, images,
/// other parts the provider fetches or decodes). Only message content holds parts.
fn media(body: &Value) -> (u64, Images, u64) {
    let mut skipped = 0;
    let mut images = Images::default();
    let mut fetched = 0;
    let parts = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_array())
        .flatten();
    for part in parts {
        match part["type"].as_str() {
            Some("image_url") => match part["image_url"]["url"].as_str() {
                Some(url) if url.starts_with("data:image/") => {
                    images.inline += 1;
                    skipped += url.len() as u64;
                }
                _ => images.remote += 1,
            },
            Some("file" | "input_audio" | "video_url") => fetched += 1,
            _ => {}
        }
    }
    (skipped, images, fetched)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fake_openrouter::model_entry;

    fn models() -> Vec<Value> {
        vec![model_entry("m", "0.000001", "0.000002", 1_000, 300)]
    }

    fn two_providers() -> Billing {
        Billing {
            providers: vec![
                ProviderPrice::new("Cheap", "0.000001", "0.000002"),
                ProviderPrice::new("Dear", "0.000003", "0.000006"),
            ],
            ..Billing::default()
        }
    }

    #[test]
    fn routes_to_the_dearest_provider_max_price_allows() {
        let body = json!({"model": "m", "max_tokens": 10});
        let b = bill(&two_providers(), "m", &body, 100, &models()).unwrap();
        assert_eq!(
            (b.provider.as_str(), b.pico),
            ("Dear", 3 * (100 + 20) * 1_000_000)
        );
        let body = json!({"model": "m", "max_tokens": 10,
            "provider": {"max_price": {"prompt": "1", "completion": 2}}});
        let b = bill(&two_providers(), "m", &body, 100, &models()).unwrap();
        assert_eq!(
            (b.provider.as_str(), b.pico),
            ("Cheap", (100 + 20) * 1_000_000)
        );
        let body = json!({"model": "m", "provider": {"max_price": {"prompt": "0.5"}}});
        assert_eq!(
            bill(&two_providers(), "m", &body, 100, &models())
                .err()
                .unwrap()
                .0,
            404
        );
        let body = json!({"model": "m", "provider": {"max_price": {"prompt": "-1"}}});
        assert_eq!(
            bill(&two_providers(), "m", &body, 100, &models())
                .err()
                .unwrap()
                .0,
            400
        );
    }

    #[test]
    fn no_cap_bills_the_model_limit_and_media_fill_the_context() {
        let b = Billing::default();
        for cap in [json!(null), json!(0), json!(-3)] {
            let body = json!({"model": "m", "max_tokens": cap});
            let got = bill(&b, "m", &body, 10, &models()).unwrap();
            assert_eq!((got.prompt_tokens, got.completion_tokens), (10, 300));
        }
        let body = json!({"model": "m", "max_tokens": 5, "n": 2, "messages": [
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
        ]});
        let got = bill(&b, "m", &body, 200, &models()).unwrap();
        // 200 bytes less the 26-byte data URL, plus one image's 1000 tokens: over the context.
        assert_eq!((got.prompt_tokens, got.completion_tokens), (1_000, 5));
        assert_eq!(got.pico, 2 * (1_000 + 10) * 1_000_000);
        let body = json!({"model": "m", "max_tokens": 5, "tools": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]});
        assert_eq!(
            bill(&b, "m", &body, 200, &models()).unwrap().prompt_tokens,
            200
        );
    }
}
