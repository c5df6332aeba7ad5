//! The hard budget end to end: 64 concurrent requests against a budget that fits about 10, a
//! kill -9 in the middle of a stream and a restart on the same data directory, and prices
//! fetched from the upstream's model list.
//!
//! The budget tests use `test/exact`, priced at $0 per prompt token and $0.00001 per completion
//! token, and a fake that charges `max_tokens × $0.00001`: the real cost then equals the
//! gateway's worst case exactly, so every reservation and settlement is predictable.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::close;
use tollgate_tests::fake_openrouter::{CHAT, ChatScript, Cost, Gate, MODELS, model_entry};
use tollgate_tests::gateway::{Gateway, GatewaySpec, SETTLE, chat, chat_stream, error_message};

const EXACT: &str = "test/exact";
/// The worst case (and real cost) of `chat(EXACT)`: 100 tokens × $0.00001.
const W: f64 = 0.001;

fn exact_spec(gw: &Gateway, budget: &str) -> GatewaySpec {
    gw.spec().price(EXACT, "0", "0.00001").budget(budget)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_exceed_the_budget_and_fill_it() {
    let gw = Gateway::new().await.unwrap();
    // 10.5 worst cases: ten requests fit whole, an eleventh fits once clamped to 50 tokens.
    let run = gw.start(&exact_spec(&gw, "0.0105")).await.unwrap();
    gw.fake.set_chat(
        ChatScript::default()
            .cost(Cost::per_max_token("0.00001"))
            .response_delay(Duration::from_millis(300)),
    );
    let mut tasks = Vec::new();
    for i in 0..64 {
        let client = if i % 2 == 0 {
            run.client()
        } else {
            run.client().h2()
        };
        tasks.push(tokio::spawn(async move {
            client.post_json(CHAT, &chat(EXACT)).await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                let msg = error_message(429, &r.json()).unwrap();
                assert!(r.header("retry-after").is_none(), "{msg}");
                assert_eq!(r.json()["error"]["metadata"]["tollgate_reason"], "budget");
                refused += 1;
            }
            s => panic!("unexpected {s}: {}\n{}", r.text(), run.proxy.describe()),
        }
    }
    let mut forwarded: Vec<u64> = gw
        .fake
        .requests_to(CHAT)
        .iter()
        .map(|r| r.body_json()["max_tokens"].as_u64().unwrap())
        .collect();
    forwarded.sort_unstable();
    assert_eq!(
        (ok, refused),
        (11, 53),
        "every request that fit was served; forwarded max_tokens: {forwarded:?}"
    );
    assert_eq!(
        forwarded[0], 50,
        "the last one was clamped to what was left"
    );
    assert!(forwarded[1..].iter().all(|&t| t == 100), "{forwarded:?}");
    assert!(
        gw.fake.max_in_flight() > 1,
        "the requests really were concurrent"
    );

    let usage = gw
        .wait_usage_file("11 settled, nothing reserved", |u| {
            u["requests"] == 11 && u["reserved_usd"] == 0.0
        })
        .await
        .unwrap();
    let total = usage["total_cost_usd"].as_f64().unwrap();
    assert!(
        total <= usage["max_cost_usd"].as_f64().unwrap() + 1e-12,
        "{usage}"
    );
    assert!(close(total, 0.0105), "{usage}");
    assert!(close(usage["budget_remaining_usd"].as_f64().unwrap(), 0.0));

    let spend = run
        .metric("tollgate_llm_spend_usd_total", &[])
        .await
        .unwrap();
    assert!(spend <= 0.0105 + 1e-9 && close(spend, 0.0105), "{spend}");
    assert!(close(
        run.metric("tollgate_budget_remaining_usd", &[])
            .await
            .unwrap(),
        0.0
    ));
    assert!(close(
        run.metric("tollgate_budget_reserved_usd", &[])
            .await
            .unwrap(),
        0.0
    ));
    assert_eq!(
        run.metric("tollgate_llm_denials_total", &[("reason", "budget")])
            .await
            .unwrap(),
        53.0
    );
    assert_eq!(
        run.metric("tollgate_llm_settlements_total", &[("source", "usage")])
            .await
            .unwrap(),
        11.0
    );
}

async fn usage_api(run: &tollgate_tests::gateway::RunningGateway) -> Value {
    let (status, body) = run.usage_get("/api/v1/usage").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_restores_spend_and_charges_the_open_reservation() {
    let gw = Gateway::new().await.unwrap();
    let spec = exact_spec(&gw, "1.00");
    gw.fake
        .set_chat(ChatScript::default().cost(Cost::per_max_token("0.00001")));
    let mut run = gw.start(&spec).await.unwrap();

    // One request settled from its usage ...
    let r = run.client().post_json(CHAT, &chat(EXACT)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let settled_id = r.json()["id"].as_str().unwrap().to_string();
    gw.wait_inference("the settled request", |l| {
        l["generation_id"] == settled_id.as_str()
    })
    .await
    .unwrap();

    // ... and one stream in flight, its worst case reserved.
    let gate = Gate::new();
    gw.fake.set_chat(
        ChatScript::default()
            .cost(Cost::per_max_token("0.00001"))
            .hold(&gate),
    );
    let mut ex = run
        .client()
        .h2()
        .post_json_streaming(CHAT, &chat_stream(EXACT))
        .await
        .unwrap();
    ex.read_until("\"content\":\"h\"", SETTLE).await.unwrap();
    let before = usage_api(&run).await;
    assert!(
        close(before["total_cost_usd"].as_f64().unwrap(), W),
        "{before}"
    );
    assert!(
        close(before["reserved_usd"].as_f64().unwrap(), W),
        "{before}"
    );

    run.proxy.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    run.proxy.wait_exit(SETTLE).await.unwrap();
    assert!(
        ex.read_to_end().await.is_err(),
        "the stream died with the proxy"
    );
    gate.open();
    drop(run);

    let run = gw.start(&spec).await.unwrap();
    let after = usage_api(&run).await;
    let total = after["total_cost_usd"].as_f64().unwrap();
    assert!(
        total >= 2.0 * W - 1e-12,
        "settled spend restored and the open reservation charged at its worst case: {after}"
    );
    assert!(close(total, 2.0 * W), "{after}");
    assert!(
        close(after["reserved_usd"].as_f64().unwrap(), 0.0),
        "{after}"
    );
    assert!(close(
        after["budget_remaining_usd"].as_f64().unwrap(),
        1.0 - 2.0 * W
    ));
    assert!(close(
        run.metric("tollgate_budget_remaining_usd", &[])
            .await
            .unwrap(),
        1.0 - 2.0 * W
    ));
    let recovered = gw
        .wait_inference("the recovered reservation", |l| {
            l["settlement_source"] == "worst-case"
        })
        .await
        .unwrap();
    assert_eq!(recovered["model"], EXACT);
    assert_eq!(recovered["cost_usd"], W);
    gw.wait_usage_file("restored totals", |u| {
        close(u["total_cost_usd"].as_f64().unwrap_or(0.0), 2.0 * W)
    })
    .await
    .unwrap();

    // The restarted proxy keeps counting from there.
    gw.fake
        .set_chat(ChatScript::default().cost(Cost::per_max_token("0.00001")));
    let r = run.client().post_json(CHAT, &chat(EXACT)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    gw.wait_usage_file("three requests' spend", |u| {
        close(u["total_cost_usd"].as_f64().unwrap_or(0.0), 3.0 * W)
    })
    .await
    .unwrap();
    assert!(
        !gw.journal().is_empty(),
        "proxy_ledger.jsonl is the journal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prices_are_fetched_from_the_models_list_and_unpriced_models_refused() {
    let gw = Gateway::new().await.unwrap();
    gw.fake.set_models(vec![model_entry(
        "vendor/fetched",
        "0.000001",
        "0.00002",
        8_000,
        1_000,
    )]);
    let spec = gw.spec().set("intercept.pricing", "fetch", true);
    let run = gw.start(&spec).await.unwrap();
    gw.fake.wait_for_requests(MODELS, 1, SETTLE).await.unwrap();

    let r = tollgate_tests::eventually(SETTLE, "vendor/fetched priced", || async {
        let r = run
            .client()
            .post_json(CHAT, &chat("vendor/fetched"))
            .await
            .ok()?;
        (r.status == 200).then_some(r)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.proxy.describe()));
    assert_eq!(r.json()["model"], "vendor/fetched");
    // A model the policy does not name is labelled `other` (bounded label values).
    let metrics = run.proxy.metrics().await.unwrap();
    assert!(!metrics.contains("vendor/fetched"), "{metrics}");
    assert!(
        run.metric("tollgate_llm_requests_total", &[("model", "other")])
            .await
            .unwrap()
            >= 1.0,
        "{metrics}"
    );

    // No max_tokens: the gateway injects one, bounded by the model's own limit.
    let mut body = chat("vendor/fetched");
    body.as_object_mut().unwrap().remove("max_tokens");
    let r = run.client().post_json(CHAT, &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let injected = gw.fake.requests_to(CHAT).last().unwrap().body_json()["max_tokens"]
        .as_u64()
        .expect("max_tokens injected");
    assert!((1..=1_000).contains(&injected), "{injected}");

    // Priced nowhere: refused before any upstream contact (fail closed).
    let before = gw.fake.requests_to(CHAT).len();
    let r = run
        .client()
        .post_json(CHAT, &chat("vendor/unpriced"))
        .await
        .unwrap();
    assert!(
        (400..500).contains(&r.status) && r.status != 429,
        "{} {}",
        r.status,
        r.text()
    );
    let msg = error_message(r.status, &r.json()).unwrap();
    assert!(msg.contains("vendor/unpriced"), "{msg}");
    assert_eq!(gw.fake.requests_to(CHAT).len(), before);

    // A policy fallback price lets it through.
    drop(run);
    let spec = spec.set(
        "intercept.pricing",
        "fallback",
        json!({"prompt": "0.000001", "completion": "0.00002"}),
    );
    let run = gw.start(&spec).await.unwrap();
    let r = run
        .client()
        .post_json(CHAT, &chat("vendor/unpriced"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
