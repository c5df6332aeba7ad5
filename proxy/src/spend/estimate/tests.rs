#![allow(clippy::unwrap_used)] // a test that unwraps bad data fails, which is the point
use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::spend::price::{ModelLimits, ModelPrice};

const MICRO: u64 = 1_000_000; // pico-USD in one micro-USD

fn entry(prompt: u64, completion: u64, cap: Option<u64>) -> ModelEntry {
    ModelEntry {
        price: ModelPrice {
            prompt: UnitPrice(prompt),
            completion: UnitPrice(completion),
            ..Default::default()
        },
        limits: ModelLimits {
            context_length: None,
            max_completion_tokens: cap,
        },
    }
}

fn table(models: &[(&str, ModelEntry)]) -> PriceTable {
    PriceTable::new(
        models
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<HashMap<_, _>>(),
        None,
    )
}

fn cfg() -> EstimateConfig {
    EstimateConfig {
        overhead_tokens: 10,
        image_tokens: 100,
        ..Default::default()
    }
}

fn shape(models: &[&str], bytes: u64, requested: Option<u64>) -> RequestShape {
    RequestShape {
        models: models.iter().map(|m| m.to_string()).collect(),
        prompt_bytes: bytes,
        images: 0,
        media: 0,
        choices: 1,
        requested_max_tokens: requested,
        output: OutputField::MaxTokens,
    }
}

#[test]
fn reads_the_shape_of_a_chat_body() {
    let body = json!({
        "model": "a/x",
        "models": ["b/y", "a/x"],
        "n": 2,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hello"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAAAAAAAA=="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "https://example.com/a.pdf"}},
        ]}],
    });
    let len = serde_json::to_vec(&body).unwrap().len();
    let s = RequestShape::from_json(&body, len, OutputField::MaxTokens).unwrap();
    assert_eq!(s.models, vec!["a/x", "b/y"]);
    assert_eq!(s.choices, 2);
    assert_eq!(s.requested_max_tokens, Some(100));
    // Two images priced per image; the remote one and the file are not bounded by the body.
    assert_eq!((s.images, s.media), (2, 2));
    let data_url = "data:image/png;base64,AAAAAAAAAA==".len() as u64;
    assert_eq!(s.prompt_bytes, len as u64 - data_url);
}

#[test]
fn only_message_content_parts_are_media() {
    let blob = "A".repeat(10_000);
    let image = json!({"type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": blob}});
    // An image-typed object in a tool schema or a response format is text to the model.
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": image}}],
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{blob}")}}}},
    });
    let len = serde_json::to_vec(&body).unwrap().len();
    let s = RequestShape::from_json(&body, len, OutputField::MaxTokens).unwrap();
    assert_eq!((s.images, s.media, s.prompt_bytes), (0, 0, len as u64));
    // The same part in a message (Messages API), in a tool result, and as a responses input.
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": [image.clone()]},
            {"role": "user", "content": [{"type": "tool_result", "content": [image.clone()]}]},
        ],
    });
    let len = serde_json::to_vec(&body).unwrap().len();
    let s = RequestShape::from_json(&body, len, OutputField::MaxTokens).unwrap();
    assert_eq!((s.images, s.media), (2, 0));
    assert_eq!(s.prompt_bytes, len as u64 - 20_000);
    let body = json!({"model": "m", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]},
        {"type": "function_call_output", "output": [{"type": "input_file", "file_id": "f-1"}]},
        {"type": "input_video", "video_url": "data:video/mp4;base64,AAAA"},
    ]});
    let s = RequestShape::from_json(&body, 10, OutputField::MaxOutputTokens).unwrap();
    assert_eq!((s.images, s.media, s.prompt_bytes), (1, 3, 10));
    // Base64 data that does not say it is an image is text too.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "text", "media_type": "text/plain", "data": blob}},
    ]}]});
    let s = RequestShape::from_json(&body, 20_000, OutputField::MaxTokens).unwrap();
    assert_eq!((s.images, s.media, s.prompt_bytes), (1, 1, 20_000));
    // A data: URL that is not an image is text: not subtracted, and not bounded as an image.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": format!("data:text/plain,{blob}")}},
    ]}]});
    let s = RequestShape::from_json(&body, 20_000, OutputField::MaxTokens).unwrap();
    assert_eq!((s.images, s.media, s.prompt_bytes), (1, 1, 20_000));
}

#[test]
fn zero_and_negative_output_caps_are_absent() {
    for cap in [json!(0), json!(-1), json!(-5_000_000_000_i64)] {
        let body = json!({"model": "m", "max_tokens": cap.clone()});
        let s = RequestShape::from_json(&body, 10, OutputField::MaxTokens).unwrap();
        assert_eq!(s.requested_max_tokens, None, "{cap}");
        let body = json!({"model": "m", "max_tokens": 50, "max_completion_tokens": cap.clone()});
        let s = RequestShape::from_json(&body, 10, OutputField::MaxTokens).unwrap();
        assert_eq!(s.requested_max_tokens, Some(50), "{cap}");
        let body = json!({"model": "m", "max_output_tokens": cap.clone()});
        let s = RequestShape::from_json(&body, 10, OutputField::MaxOutputTokens).unwrap();
        assert_eq!(s.requested_max_tokens, None, "{cap}");
    }
    // So the quote injects a cap: the smallest the model states.
    let prices = table(&[("m", entry(MICRO, MICRO, Some(700)))]);
    let body = json!({"model": "m", "max_tokens": 0});
    let s = RequestShape::from_json(&body, 10, OutputField::MaxTokens).unwrap();
    let q = quote(&s, &prices, &cfg(), Micros::MAX).unwrap();
    assert_eq!((q.max_tokens, q.worst_case), (Some(700), Micros(20 + 700)));
    let mut body = body;
    apply(&q, OutputField::MaxTokens, &mut body);
    assert_eq!(body["max_tokens"], 700);
}

#[test]
fn the_larger_of_two_output_caps_bounds_the_request() {
    let body = json!({"model": "m", "max_tokens": 10, "max_completion_tokens": 50});
    let s = RequestShape::from_json(&body, 10, OutputField::MaxTokens).unwrap();
    assert_eq!(s.requested_max_tokens, Some(50));
    let body = json!({"model": "m", "max_output_tokens": 7, "max_tokens": 99});
    let s = RequestShape::from_json(&body, 10, OutputField::MaxOutputTokens).unwrap();
    assert_eq!(s.requested_max_tokens, Some(7));
    let s = RequestShape::from_json(&json!({"model": "m", "input": "x"}), 10, OutputField::None)
        .unwrap();
    assert_eq!(s.requested_max_tokens, None);
}

#[test]
fn refuses_malformed_fields() {
    let bad = |body: Value| RequestShape::from_json(&body, 10, OutputField::MaxTokens).unwrap_err();
    assert!(matches!(
        bad(json!({})),
        EstimateError::BadField { field: "model", .. }
    ));
    assert!(matches!(
        bad(json!({"model": 3})),
        EstimateError::BadField { field: "model", .. }
    ));
    assert!(matches!(
        bad(json!({"models": ["a", 1]})),
        EstimateError::BadField {
            field: "models",
            ..
        }
    ));
    assert!(matches!(
        bad(json!({"model": "a", "n": 0})),
        EstimateError::BadField { field: "n", .. }
    ));
    assert!(matches!(
        bad(json!({"model": "a", "max_tokens": "5"})),
        EstimateError::BadField {
            field: "max_tokens",
            ..
        }
    ));
    assert!(matches!(
        bad(json!({"model": "a", "max_tokens": 1.5})),
        EstimateError::BadField {
            field: "max_tokens",
            ..
        }
    ));
    let ok =
        RequestShape::from_json(&json!({"models": ["a"]}), 10, OutputField::MaxTokens).unwrap();
    assert_eq!(ok.models, vec!["a"]);
}

#[test]
fn clamps_max_tokens_to_the_budget() {
    // 1 µUSD per prompt token, 2 µUSD per completion token, model cap 1000 completion tokens.
    let prices = table(&[("a", entry(MICRO, 2 * MICRO, Some(1000)))]);
    let s = shape(&["a"], 100, None);
    // Prompt bound: 100 bytes + 10 overhead = 110 µUSD; then 2 µUSD per output token.
    let q = quote(&s, &prices, &cfg(), Micros(10_000)).unwrap();
    assert_eq!((q.max_tokens, q.worst_case), (Some(1000), Micros(2110)));
    let q = quote(&s, &prices, &cfg(), Micros(1000)).unwrap();
    assert_eq!((q.max_tokens, q.worst_case), (Some(445), Micros(1000)));
    let q = quote(&s, &prices, &cfg(), Micros(1001)).unwrap();
    assert_eq!((q.max_tokens, q.worst_case), (Some(445), Micros(1000)));
    // 16 tokens need 142 µUSD.
    assert_eq!(
        quote(&s, &prices, &cfg(), Micros(142)).unwrap().max_tokens,
        Some(16)
    );
    let err = quote(&s, &prices, &cfg(), Micros(141)).unwrap_err();
    assert_eq!(
        err,
        EstimateError::Budget(BudgetExceeded {
            remaining: Micros(141),
            needed: Micros(142)
        })
    );
}

#[test]
fn keeps_a_smaller_requested_max_tokens() {
    let prices = table(&[("a", entry(MICRO, 2 * MICRO, Some(1000)))]);
    let q = quote(&shape(&["a"], 100, Some(20)), &prices, &cfg(), Micros::MAX).unwrap();
    assert_eq!((q.max_tokens, q.worst_case), (Some(20), Micros(150)));
    // Below min_completion_tokens is the agent's own choice: kept, and it may still fit.
    let q = quote(&shape(&["a"], 100, Some(5)), &prices, &cfg(), Micros(120)).unwrap();
    assert_eq!(q.max_tokens, Some(5));
    // A larger request is clamped, not refused.
    let q = quote(
        &shape(&["a"], 100, Some(1_000_000)),
        &prices,
        &cfg(),
        Micros(310),
    )
    .unwrap();
    assert_eq!(q.max_tokens, Some(100));
}

#[test]
fn injects_the_smallest_stated_cap_or_the_default() {
    let prices = table(&[
        ("a", entry(0, 0, Some(1000))),
        ("b", entry(0, 0, Some(300))),
        ("c", entry(0, 0, None)),
    ]);
    let q = quote(
        &shape(&["a", "b", "c"], 1, None),
        &prices,
        &cfg(),
        Micros(0),
    )
    .unwrap();
    assert_eq!((q.max_tokens, q.worst_case), (Some(300), Micros(0)));
    let q = quote(&shape(&["c"], 1, None), &prices, &cfg(), Micros(0)).unwrap();
    assert_eq!(q.max_tokens, Some(32_768));
}

#[test]
fn the_worst_case_is_the_maximum_over_every_model_at_the_highest_prices() {
    let mut cheap = entry(MICRO, MICRO, None);
    cheap.limits.context_length = Some(50);
    let prices = table(&[
        ("cheap", cheap),
        ("dear-prompt", entry(10 * MICRO, MICRO, None)),
        ("dear-output", entry(MICRO, 5 * MICRO, None)),
    ]);
    // One max_price covers all three models, so each is bounded at (10, 5): any provider of
    // any of them may charge up to that. Prompt bound 100 (50 for `cheap`'s context).
    let s = shape(&["cheap", "dear-prompt", "dear-output"], 90, Some(100));
    let q = quote(&s, &prices, &cfg(), Micros::MAX).unwrap();
    assert_eq!(
        (q.worst_case, q.model.as_str()),
        (Micros(100 * 10 + 100 * 5), "dear-prompt")
    );
    assert_eq!(
        (q.price.prompt, q.price.completion),
        (UnitPrice(10 * MICRO), UnitPrice(5 * MICRO))
    );
    let q = quote(
        &shape(&["cheap"], 90, Some(100)),
        &prices,
        &cfg(),
        Micros::MAX,
    )
    .unwrap();
    assert_eq!(q.worst_case, Micros(50 + 100));
    assert_eq!(q.price, cheap.price);
    let err = quote(
        &shape(&["cheap", "unpriced"], 1, None),
        &prices,
        &cfg(),
        Micros::MAX,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        EstimateError::Price(PriceError::Unknown { .. })
    ));
}

#[test]
fn images_choices_and_reasoning_raise_the_bound() {
    let mut e = entry(MICRO, MICRO, None);
    e.price.image = UnitPrice(1000 * MICRO);
    e.price.request = UnitPrice(7 * MICRO);
    e.price.reasoning = Some(UnitPrice(3 * MICRO));
    let prices = table(&[("a", e)]);
    let mut s = shape(&["a"], 90, Some(10));
    s.images = 2;
    // request 7 + images 2 × 1000 + prompt (90 + 10 + 2 × 100) × 1 + output 10 × 3.
    let one = 7 + 2000 + 300 + 30;
    assert_eq!(
        quote(&s, &prices, &cfg(), Micros::MAX).unwrap().worst_case,
        Micros(one)
    );
    s.choices = 3;
    assert_eq!(
        quote(&s, &prices, &cfg(), Micros::MAX).unwrap().worst_case,
        Micros(3 * one)
    );
}

#[test]
fn unbounded_media_fill_the_context_or_are_refused() {
    let mut e = entry(MICRO, MICRO, None);
    e.limits.context_length = Some(100_000);
    let prices = table(&[("a", e), ("no-ctx", entry(MICRO, MICRO, None))]);
    let mut s = shape(&["a"], 90, Some(10));
    s.images = 1;
    s.media = 1;
    // The whole context at the prompt price, whatever the body's size.
    assert_eq!(
        quote(&s, &prices, &cfg(), Micros::MAX).unwrap().worst_case,
        Micros(100_000 + 10)
    );
    s.models.push("no-ctx".into());
    assert_eq!(
        quote(&s, &prices, &cfg(), Micros::MAX).unwrap_err(),
        EstimateError::Unbounded {
            model: "no-ctx".into()
        }
    );
}

#[test]
fn sub_micro_prices_round_the_worst_case_up() {
    // 0.15 µUSD per token: 11 tokens cost 1.65 µUSD → 2 µUSD.
    let prices = table(&[("a", entry(150_000, 0, None))]);
    let mut s = shape(&["a"], 1, None);
    s.output = OutputField::None;
    assert_eq!(
        quote(&s, &prices, &cfg(), Micros::MAX).unwrap().worst_case,
        Micros(2)
    );
}

#[test]
fn the_context_length_caps_the_prompt_bound() {
    let mut e = entry(MICRO, 0, None);
    e.limits.context_length = Some(1000);
    let prices = table(&[("a", e)]);
    let mut s = shape(&["a"], 5_000_000, None);
    s.output = OutputField::None;
    assert_eq!(
        quote(&s, &prices, &cfg(), Micros::MAX).unwrap().worst_case,
        Micros(1000)
    );
}

#[test]
fn embeddings_are_refused_when_their_bound_does_not_fit() {
    let prices = table(&[("e", entry(MICRO, 0, None))]);
    let mut s = shape(&["e"], 90, None);
    s.output = OutputField::None;
    let q = quote(&s, &prices, &cfg(), Micros(100)).unwrap();
    assert_eq!((q.worst_case, q.max_tokens), (Micros(100), None));
    let err = quote(&s, &prices, &cfg(), Micros(99)).unwrap_err();
    assert_eq!(
        err,
        EstimateError::Budget(BudgetExceeded {
            remaining: Micros(99),
            needed: Micros(100)
        })
    );
}

#[test]
fn apply_writes_the_cap_and_the_max_price_into_the_body() {
    let q = Quote {
        worst_case: Micros(1),
        max_tokens: Some(42),
        model: "m".into(),
        price: ModelPrice {
            prompt: UnitPrice(150_000),
            completion: UnitPrice(600_000),
            request: UnitPrice(5_000_000),
            image: UnitPrice(3_613_000_000),
            reasoning: Some(UnitPrice(2_000_000)),
        },
    };
    let max_price = json!({
        "prompt": "0.15", "completion": "2", "request": "0.000005", "image": "0.003613"
    });
    let mut body = json!({"model": "m", "max_completion_tokens": 1000,
        "provider": {"zdr": true, "order": ["a"]}});
    apply(&q, OutputField::MaxTokens, &mut body);
    assert_eq!(
        body,
        json!({"model": "m", "max_tokens": 42, "max_completion_tokens": 42,
            "provider": {"zdr": true, "order": ["a"], "max_price": max_price}})
    );
    let mut body = json!({"model": "m"});
    apply(&q, OutputField::MaxOutputTokens, &mut body);
    assert_eq!(
        body,
        json!({"model": "m", "max_output_tokens": 42, "provider": {"max_price": max_price}})
    );
    let mut body = json!({"model": "m", "provider": "x"});
    apply(&q, OutputField::None, &mut body);
    assert_eq!(
        body,
        json!({"model": "m", "provider": {"max_price": max_price}})
    );
}

#[test]
fn output_fields_by_path() {
    assert_eq!(
        OutputField::for_path("/api/v1/chat/completions"),
        OutputField::MaxTokens
    );
    assert_eq!(
        OutputField::for_path("/api/v1/embeddings"),
        OutputField::None
    );
    assert_eq!(
        OutputField::for_path("/api/v1/responses"),
        OutputField::MaxOutputTokens
    );
}

/// The bound, written out independently of `quote`.
fn reference_cost(bytes: u64, prompt: u64, completion: u64, request: u64, n: u64, t: u64) -> u64 {
    let picos = u128::from(n)
        * (u128::from(request)
            + u128::from(bytes + 10) * u128::from(prompt)
            + u128::from(t) * u128::from(completion));
    u64::try_from(picos.div_ceil(1_000_000)).unwrap()
}

proptest! {
    /// The clamp is maximal: the quoted cap fits, and one more token would not (unless the cap
    /// is the request's own); refusals happen exactly when the minimum does not fit.
    #[test]
    fn the_clamp_is_the_largest_cap_that_fits(
        bytes in 0u64..100_000,
        prompt in 0u64..20_000_000,
        completion in 0u64..100_000_000,
        request in 0u64..50_000_000,
        n in 1u64..4,
        requested in proptest::option::of(0u64..200_000),
        remaining in 0u64..5_000_000,
    ) {
        let mut e = entry(prompt, completion, None);
        e.price.request = UnitPrice(request);
        let prices = table(&[("a", e)]);
        let mut s = shape(&["a"], bytes, requested);
        s.choices = n;
        let hi = requested.unwrap_or(32_768);
        let lo = hi.min(16);
        let cost = |t| reference_cost(bytes, prompt, completion, request, n, t);
        match quote(&s, &prices, &cfg(), Micros(remaining)) {
            Ok(q) => {
                let t = q.max_tokens.unwrap();
                prop_assert!(t >= lo && t <= hi);
                prop_assert_eq!(q.worst_case, Micros(cost(t)));
                prop_assert!(cost(t) <= remaining);
                prop_assert!(t == hi || cost(t + 1) > remaining);
            }
            Err(EstimateError::Budget(b)) => {
                prop_assert_eq!(b.needed, Micros(cost(lo)));
                prop_assert!(cost(lo) > remaining);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}
