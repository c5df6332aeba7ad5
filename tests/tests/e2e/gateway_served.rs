//! The served-model checks end to end: the fake answers as another model or provider than the
//! policy allows, and the gateway records what served each request (inference line, request
//! line, usage JSON's `served_models`), counts the violation, and withholds the response (a 502
//! OpenRouter-shaped error, or an SSE error event that ends the stream) unless the policy's
//! `withhold_served_violations` is off; the spend is settled either way.

use serde_json::{Value, json};
use tollgate_tests::fake_openrouter::{CHAT, ChatScript};
use tollgate_tests::gateway::{
    Gateway, GatewaySpec, MODEL, MODEL_2, RunningGateway, SETTLE, chat, chat_stream,
};
use tollgate_tests::{eventually, sse_data};

/// The fake's default cost per request.
const COST: f64 = 0.00123;

/// Waits for the `n`th (1-based) inference line.
async fn nth_line(gw: &Gateway, n: usize) -> Value {
    gw.wait_inference(&format!("line {n}"), |_| gw.inferences().len() >= n)
        .await
        .unwrap();
    gw.inferences()[n - 1].clone()
}

/// The live usage JSON (`GET /api/v1/usage`).
async fn usage(run: &RunningGateway) -> Value {
    let (status, body) = run.usage_get("/api/v1/usage").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn violations(run: &RunningGateway, kind: &str) -> f64 {
    run.metric("tollgate_llm_served_violations_total", &[("kind", kind)])
        .await
        .unwrap()
}

/// Waits for the violation count (counted just after the inference line is written).
async fn expect_violations(run: &RunningGateway, kind: &str, n: f64) {
    let what = format!("{n} {kind} violations");
    let r = eventually(SETTLE, &what, || async {
        (violations(run, kind).await == n).then_some(())
    })
    .await;
    let last = violations(run, kind).await;
    r.unwrap_or_else(|e| panic!("{e:#}: last {last}"));
}

/// Waits until `n` request log lines satisfy `pred` (written just after the inference line).
async fn expect_logs(run: &RunningGateway, n: usize, pred: impl Fn(&Value) -> bool) {
    let r = eventually(SETTLE, "request lines", || async {
        (run.request_logs().iter().filter(|l| pred(l)).count() == n).then_some(())
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e:#}: {:#?}", run.request_logs()));
}

/// Only [`MODEL`] allowed; only `openai` as provider, no fallbacks.
fn strict(gw: &Gateway) -> GatewaySpec {
    gw.spec()
        .set("intercept.models", "allow", json!([MODEL]))
        .set("intercept.provider", "order", json!(["openai"]))
        .set("intercept.provider", "allow_fallbacks", false)
}

/// A non-streaming and a streaming request answered by `script`; asserts both were withheld
/// with `reason`, settled and recorded with `kind`.
async fn assert_withheld(script: ChatScript, kind: &str, reason: &str, served: (&str, &str)) {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&strict(&gw)).await.unwrap();
    gw.fake.set_chat(script);

    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let body = r.json();
    assert_eq!(
        body["error"]["metadata"]["tollgate_reason"], reason,
        "{body}"
    );
    assert!(!r.text().contains("hi!"), "content withheld: {}", r.text());
    let line = nth_line(&gw, 1).await;
    assert_eq!(line["served_violation"], kind, "{line}");
    assert_eq!(line["status_code"], 502);
    assert_eq!(line["cost_usd"], COST, "the spend is settled: {line}");
    assert_eq!(line[served.0], served.1, "{line}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("response withheld: served by"), "{line}");
    expect_violations(&run, kind, 1.0).await;

    let r = run
        .client()
        .post_json(CHAT, &chat_stream(MODEL))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let data = sse_data(&text);
    assert_eq!(
        data.len(),
        1,
        "only the error event reaches the agent: {text}"
    );
    let event: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(
        event["error"]["metadata"]["tollgate_reason"], reason,
        "{text}"
    );
    assert!(!text.contains("\"content\""), "no content: {text}");
    let line = nth_line(&gw, 2).await;
    assert_eq!(line["served_violation"], kind, "{line}");
    assert_eq!(
        line["cost_usd"], COST,
        "settled from the generation record: {line}"
    );
    assert_eq!(line["settlement_source"], "generation");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("response withheld: served by"), "{line}");
    expect_violations(&run, kind, 2.0).await;

    expect_logs(&run, 2, |l| {
        l["withheld"] == true && l["violation"] == reason && l["reason"] == reason
    })
    .await;
    let usage = usage(&run).await;
    assert_eq!(usage["models"][MODEL]["requests"], 2, "{usage}");
    // The evidence record is appended right after the inference line: wait for it.
    let path = gw.data_dir().join("proxy_decisions.jsonl");
    let needle = format!("\"violation\":\"{kind}\"");
    eventually(
        SETTLE,
        "the evidence llm records carry the violation",
        || async {
            let decisions = std::fs::read_to_string(&path).unwrap_or_default();
            (decisions.lines().filter(|l| l.contains(&needle)).count() == 2).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_substituted_model_is_withheld_counted_and_settled() {
    let script = ChatScript::default().served_model(MODEL_2);
    let served = ("served_model", MODEL_2);
    assert_withheld(script, "model", "served-model-violation", served).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_provider_is_withheld_counted_and_settled() {
    let script = ChatScript::default().served_provider("Azure");
    assert_withheld(
        script,
        "provider",
        "served-provider-violation",
        ("served_provider", "Azure"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_switch_off_a_violation_passes_but_is_counted_and_logged() {
    let gw = Gateway::new().await.unwrap();
    let spec = strict(&gw).set("intercept", "withhold_served_violations", false);
    let run = gw.start(&spec).await.unwrap();
    gw.fake
        .set_chat(ChatScript::default().served_model(MODEL_2));
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], MODEL_2);
    let r = run
        .client()
        .post_json(CHAT, &chat_stream(MODEL))
        .await
        .unwrap();
    assert!(r.text().contains("[DONE]"), "{}", r.text());
    for n in [1, 2] {
        let line = nth_line(&gw, n).await;
        assert_eq!(line["served_violation"], "model", "{line}");
        assert_eq!(line["status_code"], 200);
        assert_eq!(line["served_model"], MODEL_2);
    }
    expect_violations(&run, "model", 2.0).await;
    expect_logs(&run, 2, |l| {
        l["violation"] == "served-model-violation" && l["withheld"] == false
    })
    .await;
    let usage = usage(&run).await;
    assert_eq!(usage["served_models"][MODEL_2]["requests"], 2, "{usage}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compliant_response_is_recorded_without_a_violation() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&strict(&gw)).await.unwrap();
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = run
        .client()
        .post_json(CHAT, &chat_stream(MODEL))
        .await
        .unwrap();
    assert!(r.text().contains("[DONE]"), "{}", r.text());
    for n in [1, 2] {
        let line = nth_line(&gw, n).await;
        assert_eq!(line["served_model"], MODEL, "{line}");
        assert_eq!(line["served_provider"], "OpenAI", "{line}");
        assert_eq!(line["served_violation"], Value::Null, "{line}");
    }
    assert_eq!(violations(&run, "model").await, 0.0);
    assert_eq!(violations(&run, "provider").await, 0.0);
    expect_logs(&run, 2, |l| {
        l["violation"] == "-" && l["served_model"] == MODEL && l["served_provider"] == "OpenAI"
    })
    .await;
    let usage = usage(&run).await;
    assert_eq!(usage["served_models"][MODEL]["requests"], 2, "{usage}");
}
