//! The reservation covers the bill: requests an agent crafts to cost more than their worst-case
//! estimate, sent through the real binary to a fake OpenRouter that bills each as a real one
//! could at the worst ([`Cost::Billed`]: the dearest provider `provider.max_price` allows,
//! every prompt byte a token, remote media filling the context, no output cap meaning the
//! model's own limit, sub-micro-USD amounts kept). For every request the journal's reservation
//! and settlement must each be at least what the fake billed, and the ledger must stay within
//! the budget.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use tollgate_tests::fake_openrouter::{
    Billing, CHAT, ChatScript, Cost, ProviderPrice, model_entry,
};
use tollgate_tests::gateway::{Gateway, GatewaySpec, RunningGateway, SETTLE, chat, error_message};

/// $1 per million prompt tokens, $2 per million completion tokens, $0.001 per image; 100 000
/// tokens of context, 20 000 of completion.
const PRICED: &str = "test/priced";
/// $0.0001 per million prompt tokens, free completions: every request costs under 1 µUSD.
const TINY: &str = "test/tiny";
/// Priced by the policy only: no context length is known.
const POLICY_ONLY: &str = "test/policy-only";

fn models() -> Vec<Value> {
    let mut priced = model_entry(PRICED, "0.000001", "0.000002", 100_000, 20_000);
    priced["pricing"]["image"] = json!("0.001");
    vec![
        priced,
        model_entry(TINY, "0.0000000001", "0", 100_000, 20_000),
    ]
}

fn spec(gw: &Gateway, budget: &str) -> GatewaySpec {
    gw.spec()
        .set("intercept.pricing", "fetch", true)
        .price(POLICY_ONLY, "0.000001", "0.000002")
        .budget(budget)
}

/// Starts the proxy and waits until the fetched model list prices [`TINY`] (probing with a
/// request that costs under 1 µUSD and is checked like every other).
async fn start(gw: &Gateway, budget: &str) -> RunningGateway {
    gw.fake.set_models(models());
    gw.fake.set_chat(billed(Billing::default()));
    let run = gw.start(&spec(gw, budget)).await.unwrap();
    tollgate_tests::eventually(SETTLE, "the model list fetched", || async {
        let r = run.client().post_json(CHAT, &chat(TINY)).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.proxy.describe()));
    run
}

fn billed(billing: Billing) -> ChatScript {
    ChatScript::default().cost(Cost::Billed(billing))
}

fn with_parts(model: &str, parts: Value) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 100,
    })
}

/// One forwarded chat request: what the fake billed, and the journal's reservation and
/// settlement for it (paired in order: the requests were sent one after another, and each
/// reservation is journalled before its request is forwarded).
struct Checked {
    billed_pico: u64,
    reserved: u64,
    charged: u64,
}

async fn reservations_and_bills(gw: &Gateway) -> Vec<Checked> {
    let forwarded = gw.fake.requests_to(CHAT);
    let journal = tollgate_tests::eventually(SETTLE, "every request settled", || async {
        let j = gw.journal();
        let settles = j.iter().filter(|r| r["t"] == "settle").count();
        (settles >= forwarded.len()).then_some(j)
    })
    .await
    .unwrap();
    let reserves: Vec<&Value> = journal.iter().filter(|r| r["t"] == "reserve").collect();
    assert_eq!(
        reserves.len(),
        forwarded.len(),
        "one reservation per forwarded request"
    );
    reserves
        .iter()
        .zip(&forwarded)
        .map(|(reserve, request)| {
            let settle = journal
                .iter()
                .find(|r| r["t"] == "settle" && r["id"] == reserve["id"])
                .unwrap();
            let generation = request
                .generation_id
                .as_deref()
                .and_then(|id| gw.fake.generation(id));
            Checked {
                billed_pico: generation.map_or(0, |g| g.billed_pico),
                reserved: reserve["micros"].as_u64().unwrap(),
                charged: settle["micros"].as_u64().unwrap(),
            }
        })
        .collect()
}

/// Why `c` breaks the budget's promise, if it does.
fn broken(what: &str, c: &Checked) -> Option<String> {
    let billed = u128::from(c.billed_pico);
    if u128::from(c.reserved) * 1_000_000 < billed {
        return Some(format!(
            "{what}: reserved {} µUSD, billed {} pico-USD",
            c.reserved, c.billed_pico
        ));
    }
    if u128::from(c.charged) * 1_000_000 < billed {
        return Some(format!(
            "{what}: charged {} µUSD for a bill of {} pico-USD",
            c.charged, c.billed_pico
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn every_crafted_request_is_reserved_at_no_less_than_its_bill() {
    let gw = Gateway::new().await.unwrap();
    let run = start(&gw, "10").await;
    let blob = "A".repeat(90_000);
    let dear = Billing {
        providers: vec![
            ProviderPrice::new("ListPrice", "0.000001", "0.000002"),
            ProviderPrice::new("Dear", "0.000003", "0.000006"),
        ],
        ..Billing::default()
    };
    let mut cases: Vec<(&str, Value, Billing)> = Vec::new();
    let mut body = chat(PRICED);
    body["max_tokens"] = json!(0);
    body["stream"] = json!(true);
    cases.push(("max_tokens 0, streamed", body, Billing::default()));
    let mut body = chat(PRICED);
    body["max_tokens"] = json!(0);
    cases.push(("max_tokens 0", body, Billing::default()));
    let mut body = chat(PRICED);
    body["max_tokens"] = json!(-1);
    cases.push(("max_tokens -1", body, Billing::default()));
    let mut body = chat(PRICED);
    body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters":
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{blob}")}}}}]);
    cases.push((
        "an image-typed object in a tool schema",
        body,
        Billing::default(),
    ));
    let body = with_parts(
        PRICED,
        json!([{"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{blob}")}}]),
    );
    cases.push(("an inline image", body, Billing::default()));
    let remote_image = json!([
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "https://example.com/huge.png"}},
    ]);
    cases.push((
        "a remote image",
        with_parts(PRICED, remote_image.clone()),
        Billing::default(),
    ));
    let video =
        json!([{"type": "video_url", "video_url": {"url": "https://example.com/long.mp4"}}]);
    cases.push((
        "a remote video",
        with_parts(PRICED, video),
        Billing::default(),
    ));
    let mut body = chat(PRICED);
    body["max_tokens"] = json!(10_000);
    cases.push(("a dearer provider", body, dear));
    for _ in 0..3 {
        cases.push(("a sub-micro-USD request", chat(TINY), Billing::default()));
    }
    let mut cases: Vec<(&str, String, Billing)> = cases
        .into_iter()
        .map(|(what, body, billing)| (what, body.to_string(), billing))
        .collect();
    // Numbers the gateway re-serialises longer (`1e9` → `1000000000.0`) in a tool schema.
    let numbers = vec!["1e9"; 20_000].join(",");
    let raw = format!(
        r#"{{"model":"{PRICED}","max_tokens":100,"messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{{"type":"integer","enum":[{numbers}]}}}}}}]}}"#
    );
    cases.push(("numbers that re-serialise longer", raw, Billing::default()));

    // What each forwarded request was (the probes first); failures are collected, not
    // asserted one by one, so a run shows every case that breaks.
    let mut labels = vec!["probe"; gw.fake.requests_to(CHAT).len()];
    let mut failures = Vec::new();
    for (what, body, billing) in &cases {
        gw.fake.set_chat(billed(billing.clone()));
        let before = gw.fake.requests_to(CHAT).len();
        let r = run
            .client()
            .post_raw_json(CHAT, body.clone())
            .await
            .unwrap();
        if gw.fake.requests_to(CHAT).len() > before {
            labels.push(what);
        }
        if r.status != 200 {
            failures.push(format!("{what}: {} {}", r.status, r.text()));
        }
    }
    let forwarded = gw.fake.requests_to(CHAT);
    assert_eq!(labels.len(), forwarded.len());

    // Media the body does not bound, for a model of unknown context: refused before the upstream.
    let r = run
        .client()
        .post_json(CHAT, &with_parts(POLICY_ONLY, remote_image))
        .await
        .unwrap();
    if r.status != 400 || r.json()["error"]["metadata"]["tollgate_reason"] != "unbounded-media" {
        failures.push(format!("unboundable media: {} {}", r.status, r.text()));
    } else {
        let msg = error_message(400, &r.json()).unwrap();
        assert!(msg.contains(POLICY_ONLY), "{msg}");
    }

    for (what, r) in labels.iter().zip(&forwarded) {
        let types = r.header_values("content-type");
        if types != ["application/json"] {
            failures.push(format!("{what}: Content-Type upstream {types:?}"));
        }
        if r.body_json()["max_tokens"].as_i64().unwrap_or(0) <= 0 {
            failures.push(format!("{what}: forwarded without an output cap"));
        }
        if *what == "a dearer provider" {
            let max_price = &r.body_json()["provider"]["max_price"];
            let expected =
                json!({"prompt": "1", "completion": "2", "request": "0", "image": "0.001"});
            if *max_price != expected {
                failures.push(format!("{what}: provider.max_price {max_price}"));
            }
        }
    }
    let checked = reservations_and_bills(&gw).await;
    for (what, c) in labels.iter().zip(&checked) {
        failures.extend(broken(what, c));
        if c.billed_pico == 0 {
            failures.push(format!("{what}: the fake billed nothing"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        run.metric("tollgate_llm_overcharges_total", &[])
            .await
            .unwrap(),
        0.0
    );
    let usage = gw
        .wait_usage_file("every request settled", |u| {
            u["requests"] == checked.len() && u["reserved_usd"] == 0.0
        })
        .await
        .unwrap();
    assert!(
        usage["total_cost_usd"].as_f64().unwrap() <= usage["max_cost_usd"].as_f64().unwrap(),
        "{usage}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uncapped_request_cannot_push_the_ledger_past_the_budget() {
    let gw = Gateway::new().await.unwrap();
    // $0.03: the model's own 20 000-token limit would cost $0.04.
    let run = start(&gw, "0.03").await;
    for _ in 0..3 {
        let mut body = chat(PRICED);
        body["max_tokens"] = json!(0);
        let r = run.client().post_json(CHAT, &body).await.unwrap();
        assert!(
            r.status == 200 || r.status == 429,
            "{} {}",
            r.status,
            r.text()
        );
    }
    let checked = reservations_and_bills(&gw).await;
    let failures: Vec<String> = checked
        .iter()
        .filter_map(|c| broken("max_tokens 0", c))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let usage = gw
        .wait_usage_file("every request settled", |u| {
            u["requests"] == checked.len() && u["reserved_usd"] == 0.0
        })
        .await
        .unwrap();
    let total = usage["total_cost_usd"].as_f64().unwrap();
    assert!(
        total > 0.02,
        "the first request ran, clamped to fit: {usage}"
    );
    assert!(
        total <= 0.03 + 1e-12,
        "the ledger stays within the budget: {usage}"
    );
}
