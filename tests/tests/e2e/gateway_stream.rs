//! The gateway's streaming and settlement paths end to end: SSE passes through unbuffered (h1,
//! h2, hyper, curl), keep-alives and mid-stream errors are forwarded, and every request is
//! settled: from the final usage, from a generation lookup (404 first, then found), or at the
//! reserved worst case; also when the stream is cut or the client hangs up mid-stream.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_tests::fake_openrouter::{CHAT, ChatScript, GENERATION, Gate, GenerationScript};
use tollgate_tests::gateway::{Gateway, MODEL, SETTLE, chat, chat_stream};
use tollgate_tests::llm_client::{AGENT_KEY, TIMED_OUT};
use tollgate_tests::sse_data;

fn generation_id(ex: &tollgate_tests::llm_client::Exchange) -> String {
    ex.response
        .headers()
        .get("x-generation-id")
        .expect("the gateway returns X-Generation-Id")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_passes_through_and_settles_from_the_final_usage() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for client in [run.client(), run.client().h2()] {
        let r = client.post_json(CHAT, &chat_stream(MODEL)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let text = r.text();
        assert!(
            text.starts_with(": OPENROUTER PROCESSING\n\n"),
            "keep-alive forwarded: {text:?}"
        );
        let data = sse_data(&text);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
        let events: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let content: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "hi!");
        assert_eq!(events.last().unwrap()["usage"]["cost"], 0.00123);
        let id = events[0]["id"].as_str().unwrap();
        let line = gw
            .wait_inference("the stream's line", |l| l["generation_id"] == id)
            .await
            .unwrap();
        assert_eq!(line["settlement_source"], "usage");
        assert_eq!(line["cost_usd"], 0.00123);
        assert_eq!(line["status_code"], 200);
        assert_eq!(line["prompt_tokens"], 12);
    }
    assert_eq!(gw.fake.requests_to(CHAT)[0].body_json()["stream"], true);
    assert!(
        gw.fake.requests_to(GENERATION).is_empty(),
        "usage in the stream: no lookup"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_is_forwarded_unbuffered_hyper() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for client in [run.client(), run.client().h2()] {
        let gate = Gate::new();
        gw.fake.set_chat(ChatScript::default().hold(&gate));
        let mut ex = client
            .post_json_streaming(CHAT, &chat_stream(MODEL))
            .await
            .unwrap();
        assert_eq!(ex.status(), 200);
        let id = generation_id(&ex);
        let first = ex
            .read_until("\"content\":\"h\"", SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", run.proxy.describe()));
        assert!(first.contains(": OPENROUTER PROCESSING"), "{first}");
        let s = gw.fake.stream(&id).unwrap();
        assert!(
            !s.finished && s.events_sent == 1,
            "the client saw the first event while the upstream was still streaming: {s:?}"
        );
        gate.open();
        let rest = ex.read_to_end().await.unwrap();
        assert!(rest.contains("[DONE]"), "{rest}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_is_forwarded_unbuffered_curl() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for http2 in [false, true] {
        let gate = Gate::new();
        gw.fake.set_chat(ChatScript::default().hold(&gate));
        let mut curl = run.curl();
        if http2 {
            curl = curl.http2();
        }
        let mut lines = curl.post_lines(CHAT, &chat_stream(MODEL)).await.unwrap();
        let seen = lines
            .read_until("\"content\":\"h\"", SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", run.proxy.describe()));
        assert!(
            seen.iter().any(|l| l == ": OPENROUTER PROCESSING"),
            "{seen:?}"
        );
        let held = gw.fake.streams().into_iter().last().unwrap();
        assert!(!held.finished, "{held:?}");
        gate.open();
        lines.read_until("[DONE]", SETTLE).await.unwrap();
        assert_eq!(lines.wait().await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_stream_first_event_arrives_before_the_rest_is_generated() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    // From the response head: the fake sends the first event at once, the rest `delay` apart.
    // The baseline is an undelayed stream through the same gateway, now, on this machine.
    let timing = || async {
        let mut ex = run
            .client()
            .h2()
            .post_json_streaming(CHAT, &chat_stream(MODEL))
            .await
            .unwrap();
        let start = Instant::now();
        ex.read_until("\"content\":\"h\"", SETTLE).await.unwrap();
        let first = start.elapsed();
        let rest = ex.read_to_end().await.unwrap();
        assert!(rest.contains("[DONE]"));
        (first, start.elapsed())
    };
    let (baseline, _) = timing().await;
    let delay = Duration::from_millis(500);
    gw.fake.set_chat(ChatScript::default().event_delay(delay));
    let (first, all) = timing().await;
    assert!(
        first < baseline + delay / 2,
        "first event after {first:?} (undelayed: {baseline:?}; events every {delay:?})"
    );
    assert!(all >= delay * 3, "{all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mid_stream_error_is_forwarded_and_settled() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    gw.fake
        .set_chat(ChatScript::default().mid_stream_error(502, "provider died"));
    let r = run
        .client()
        .post_json(CHAT, &chat_stream(MODEL))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let data = sse_data(&r.text());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], 502, "{}", r.text());
    assert_eq!(last["error"]["message"], "provider died");
    let id = last["id"].as_str().unwrap();
    let line = gw
        .wait_inference("the errored stream's line", |l| l["generation_id"] == id)
        .await
        .unwrap();
    // No usage in the stream: the cost comes from the generation record.
    assert_eq!(line["settlement_source"], "generation", "{line}");
    assert_eq!(line["cost_usd"], 0.00123);
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("provider died"),
        "the upstream's error is recorded: {line}"
    );
    assert_eq!(
        run.metric(
            "tollgate_llm_settlements_total",
            &[("source", "generation")]
        )
        .await
        .unwrap(),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_stream_is_settled_via_generation_lookup() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for client in [run.client(), run.client().h2()] {
        gw.fake.push_chat(ChatScript::default().cut());
        let mut ex = client
            .post_json_streaming(CHAT, &chat_stream(MODEL))
            .await
            .unwrap();
        let id = generation_id(&ex);
        // (Whether the client sees the cut is `cut_upstream_stream_is_cut_for_the_client_too`.)
        let seen = match ex.read_to_end().await {
            Ok(text) => text,
            Err((text, _)) => text,
        };
        assert!(seen.contains("\"content\":\"!\""), "{seen}");
        assert!(!seen.contains("[DONE]"), "{seen}");
        assert!(gw.fake.stream(&id).unwrap().cut);
        let line = gw
            .wait_inference("the cut stream's line", |l| {
                l["generation_id"] == id.as_str()
            })
            .await
            .unwrap();
        assert_eq!(line["settlement_source"], "generation", "{line}");
        assert_eq!(line["cost_usd"], 0.00123);
    }
    let lookups = gw.fake.requests_to(GENERATION);
    assert!(lookups.len() >= 2);
    assert_eq!(
        lookups[0].header("authorization"),
        Some(format!("Bearer {AGENT_KEY}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_upstream_stream_is_cut_for_the_client_too() {
    // A proxy must not turn a truncated response into a complete one: when the upstream's
    // stream breaks, the client's must break too (h1: no terminating chunk; h2: RST_STREAM),
    // so an SDK reports the failure instead of returning a silently truncated answer.
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for client in [run.client(), run.client().h2()] {
        gw.fake.push_chat(ChatScript::default().cut());
        let mut ex = client
            .post_json_streaming(CHAT, &chat_stream(MODEL))
            .await
            .unwrap();
        match ex.read_to_end().await {
            // A stall until the client's own timeout is not a cut: the gateway must break the
            // client's stream when the upstream's breaks.
            Err((seen, error)) => {
                assert_ne!(error, TIMED_OUT, "the client's stream hung: {seen:?}");
                assert!(seen.contains("\"content\":\"!\""), "{seen}");
            }
            Ok(seen) => {
                panic!("the upstream cut its stream but the client saw a clean end: {seen:?}")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_mid_stream_is_still_settled() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for client in [run.client(), run.client().h2()] {
        let gate = Gate::new();
        gw.fake.set_chat(ChatScript::default().hold(&gate));
        let mut ex = client
            .post_json_streaming(CHAT, &chat_stream(MODEL))
            .await
            .unwrap();
        let id = generation_id(&ex);
        ex.read_until("\"content\":\"h\"", SETTLE).await.unwrap();
        ex.disconnect();
        // The upstream then goes on (or not: the gateway may hang up on it).
        tokio::time::sleep(Duration::from_millis(200)).await;
        gate.open();
        let line = gw
            .wait_inference("the abandoned stream's line", |l| {
                l["generation_id"] == id.as_str()
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", run.proxy.describe()));
        let source = line["settlement_source"].as_str().unwrap();
        assert!(
            ["usage", "generation"].contains(&source),
            "settled from a real cost, not guessed: {line}"
        );
        assert_eq!(line["cost_usd"], 0.00123);
    }
    let usage = gw
        .wait_usage_file("both settled", |u| u["requests"] == 2)
        .await
        .unwrap();
    assert_eq!(usage["reserved_usd"], 0.0);
    assert!((usage["total_cost_usd"].as_f64().unwrap() - 0.00246).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_usage_is_looked_up_404_then_200() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    gw.fake.set_generation(GenerationScript {
        misses: 2,
        cost: Some(0.0042),
    });
    gw.fake.push_chat(ChatScript::default().no_usage());
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json().get("usage").is_none());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let line = gw
        .wait_inference("the looked-up line", |l| l["generation_id"] == id.as_str())
        .await
        .unwrap();
    assert_eq!(line["settlement_source"], "generation", "{line}");
    assert_eq!(line["cost_usd"], 0.0042);
    assert_eq!(gw.fake.lookups(&id), 3, "two 404s, then found");
    let usage = gw
        .wait_usage_file("the looked-up cost", |u| u["requests"] == 1)
        .await
        .unwrap();
    assert!((usage["total_cost_usd"].as_f64().unwrap() - 0.0042).abs() < 1e-9);
    assert_eq!(
        run.metric(
            "tollgate_llm_settlements_total",
            &[("source", "generation")]
        )
        .await
        .unwrap(),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_cost_is_settled_at_the_worst_case() {
    // The gateway retries the lookup with backoff before it gives up and charges the
    // reservation: 250 ms doubled six times, ~32 s in all; this test starts at 10 ms (~1.3 s).
    let gw = Gateway::new().await.unwrap();
    // Prompt price 0: the worst case is exactly max_tokens × completion = 100 × $0.00001.
    let spec = gw.spec().price("test/exact", "0", "0.00001");
    let run = gw
        .start_with(&spec, &[("TOLLGATE_TEST_LOOKUP_FIRST_WAIT_MS", "10")])
        .await
        .unwrap();
    gw.fake.set_generation(GenerationScript {
        misses: u32::MAX,
        cost: None,
    });
    gw.fake.push_chat(ChatScript::default().no_usage());
    let r = run
        .client()
        .post_json(CHAT, &chat("test/exact"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let line = tollgate_tests::eventually(SETTLE, "a worst-case settlement", || async {
        gw.inferences()
            .into_iter()
            .find(|l| l["generation_id"] == id.as_str())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.proxy.describe()));
    assert_eq!(line["settlement_source"], "worst-case", "{line}");
    assert_eq!(line["cost_usd"], 0.001);
    assert!(gw.fake.lookups(&id) >= 2, "it did look the cost up first");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_hangup_is_noticed_while_the_upstream_is_silent() {
    // The gateway's own contract (settle.rs `Pump`): "if the client leaves, the upstream is
    // dropped (stopping the generation) and the request is settled". That must not wait for the
    // upstream's next chunk: a model thinking for minutes sends nothing, and the reservation
    // (and the upstream generation) would stay open until then or the read timeout.
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for client in [run.client(), run.client().h2()] {
        let gate = Gate::new();
        gw.fake.set_chat(ChatScript::default().hold(&gate));
        let mut ex = client
            .post_json_streaming(CHAT, &chat_stream(MODEL))
            .await
            .unwrap();
        let id = generation_id(&ex);
        ex.read_until("\"content\":\"h\"", SETTLE).await.unwrap();
        ex.disconnect();
        let gone = tollgate_tests::eventually(
            Duration::from_secs(5),
            "the gateway hangs up on the upstream",
            || async { gw.fake.stream(&id).filter(|s| s.client_gone) },
        )
        .await;
        let settled = tollgate_tests::eventually(
            Duration::from_secs(5),
            "the abandoned stream settled",
            || async {
                gw.inferences()
                    .into_iter()
                    .find(|l| l["generation_id"] == id.as_str())
            },
        )
        .await;
        gate.open();
        gone.unwrap();
        let line = settled.unwrap();
        assert_eq!(line["cost_usd"], 0.00123, "{line}");
    }
}
