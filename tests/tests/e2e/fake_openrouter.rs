//! Self-tests of the fake OpenRouter (no proxy): every route and script answers the shapes the
//! gateway tests rely on, over h1 and h2, with hyper and curl.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::fake_openrouter::{
    CHAT, ChatScript, Cost, EMBEDDINGS, FakeOpenRouter, GENERATION, Gate, GenerationScript,
    MANAGEMENT_KEY, MODELS, WorkspaceScript, model_entry,
};
use tollgate_tests::llm_client::{AGENT_KEY, CurlPost, LlmClient};
use tollgate_tests::sse_data;

fn client(fake: &FakeOpenRouter) -> LlmClient {
    LlmClient::new(fake.addr(), "openrouter.ai", fake.ca().pem().as_bytes()).unwrap()
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
           "stream": stream, "max_tokens": 50})
}

#[tokio::test]
async fn chat_json_has_openrouter_shape_and_is_recorded() {
    let fake = FakeOpenRouter::start().await.unwrap();
    for c in [client(&fake), client(&fake).h2()] {
        let r = c
            .post_json_with(CHAT, &chat_body(false), &[("x-title", "t")])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("gen-"));
        assert_eq!(r.header("x-generation-id"), Some(id));
        assert_eq!(v["model"], "openai/gpt-4o-mini");
        assert_eq!(v["provider"], "OpenAI");
        assert_eq!(v["choices"][0]["message"]["content"], "hi!");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["cost"], 0.00123);
        assert_eq!(v["usage"]["total_tokens"], 15);
    }
    let recs = fake.requests_to(CHAT);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].version, "HTTP/1.1");
    assert_eq!(recs[1].version, "HTTP/2.0");
    assert_eq!(
        recs[0].header("authorization"),
        Some(format!("Bearer {AGENT_KEY}").as_str())
    );
    assert_eq!(recs[0].header("X-Title"), Some("t"));
    assert_eq!(recs[0].body_json()["max_tokens"], 50);
    assert!(recs[0].generation_id.is_some());
}

#[tokio::test]
async fn chat_requires_a_bearer_token() {
    let fake = FakeOpenRouter::start().await.unwrap();
    let r = client(&fake)
        .with_auth(None)
        .post_json(CHAT, &chat_body(false))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], 401);
}

#[tokio::test]
async fn chat_scripts_errors_missing_usage_and_per_token_cost() {
    let fake = FakeOpenRouter::start().await.unwrap();
    let c = client(&fake);
    fake.push_chat(ChatScript::default().error_status(400, "model is required"));
    let r = c.post_json(CHAT, &chat_body(false)).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": {"code": 400, "message": "model is required"}})
    );

    fake.push_chat(ChatScript::default().no_usage());
    let r = c.post_json(CHAT, &chat_body(false)).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json().get("usage").is_none());

    fake.set_chat(ChatScript::default().cost(Cost::per_max_token("0.00001")));
    let r = c.post_json(CHAT, &chat_body(false)).await.unwrap();
    assert_eq!(r.json()["usage"]["cost"], 0.0005, "50 tokens x $0.00001");
    assert_eq!(r.json()["usage"]["completion_tokens"], 50);
    let text = r.text();
    assert!(text.contains("\"cost\":0.0005,"), "{text}");
}

#[tokio::test]
async fn chat_streams_sse_with_keepalive_and_final_usage() {
    let fake = FakeOpenRouter::start().await.unwrap();
    for c in [client(&fake), client(&fake).h2()] {
        let r = c.post_json(CHAT, &chat_body(true)).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let text = r.text();
        assert!(text.starts_with(": OPENROUTER PROCESSING\n\n"), "{text}");
        let data = sse_data(&text);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let events: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let content: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "hi!");
        assert!(
            events[..events.len() - 1]
                .iter()
                .all(|e| e["usage"].is_null())
        );
        let last = events.last().unwrap();
        assert_eq!(last["usage"]["cost"], 0.00123);
        assert_eq!(r.header("x-generation-id"), last["id"].as_str());
        let s = fake.stream(last["id"].as_str().unwrap()).unwrap();
        assert!(s.finished && !s.cut && !s.client_gone, "{s:?}");
        assert_eq!(s.events_sent, 4);
    }
}

#[tokio::test]
async fn chat_stream_mid_stream_error_and_cut() {
    let fake = FakeOpenRouter::start().await.unwrap();
    for c in [client(&fake), client(&fake).h2()] {
        fake.push_chat(ChatScript::default().mid_stream_error(502, "provider died"));
        let r = c.post_json(CHAT, &chat_body(true)).await.unwrap();
        let data = sse_data(&r.text());
        let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], 502);
        assert_eq!(last["error"]["message"], "provider died");
        assert!(!r.text().contains("[DONE]") && !r.text().contains("\"usage\""));

        fake.push_chat(ChatScript::default().cut());
        let mut ex = c.post_json_streaming(CHAT, &chat_body(true)).await.unwrap();
        let (seen, err) = ex
            .read_to_end()
            .await
            .expect_err("a cut stream must not end cleanly");
        assert!(seen.contains("\"content\":\"!\""), "{seen}");
        assert!(!seen.contains("usage"), "{seen}");
        assert!(!err.is_empty());
        let id = ex.response.headers()["x-generation-id"].to_str().unwrap();
        assert!(fake.stream(id).unwrap().cut);
    }
}

#[tokio::test]
async fn held_stream_sends_the_first_event_then_waits_for_the_gate() {
    let fake = FakeOpenRouter::start().await.unwrap();
    let gate = Gate::new();
    fake.set_chat(ChatScript::default().hold(&gate));
    let mut ex = client(&fake)
        .post_json_streaming(CHAT, &chat_body(true))
        .await
        .unwrap();
    let id = ex.response.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let first = ex
        .read_until("\"content\":\"h\"", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(first.contains(": OPENROUTER PROCESSING"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = fake.stream(&id).unwrap();
    assert!(!s.finished && s.events_sent == 1, "{s:?}");
    gate.open();
    let rest = ex.read_to_end().await.unwrap();
    assert!(rest.contains("[DONE]"));
    assert!(fake.stream(&id).unwrap().finished);

    // A client that hangs up while held is noticed.
    let gate = Gate::new();
    fake.set_chat(ChatScript::default().hold(&gate));
    let mut ex = client(&fake)
        .h2()
        .post_json_streaming(CHAT, &chat_body(true))
        .await
        .unwrap();
    let id = ex.response.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_string();
    ex.read_until("\"content\":\"h\"", Duration::from_secs(5))
        .await
        .unwrap();
    ex.disconnect();
    tollgate_tests::eventually(Duration::from_secs(5), "client_gone", || async {
        fake.stream(&id).filter(|s| s.client_gone).map(|_| ())
    })
    .await
    .unwrap();
}

/// Time from the response head to the first content event, and to the end, of one stream.
async fn stream_timing(fake: &FakeOpenRouter) -> (Duration, Duration) {
    let mut ex = client(fake)
        .post_json_streaming(CHAT, &chat_body(true))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    ex.read_until("\"content\":\"h\"", Duration::from_secs(5))
        .await
        .unwrap();
    let first = start.elapsed();
    ex.read_to_end().await.unwrap();
    (first, start.elapsed())
}

#[tokio::test]
async fn slow_stream_spaces_events() {
    let fake = FakeOpenRouter::start().await.unwrap();
    // The baseline is an undelayed stream measured now, on this (shared) machine: the first
    // event of a delayed one must come as soon, not `delay` later; the rest must be spaced.
    let (baseline, _) = stream_timing(&fake).await;
    let delay = Duration::from_millis(300);
    fake.set_chat(ChatScript::default().event_delay(delay));
    let (first, all) = stream_timing(&fake).await;
    assert!(
        first < baseline + delay / 2,
        "first event after {first:?}; undelayed: {baseline:?}"
    );
    assert!(all >= delay * 3, "{all:?}");
}

#[tokio::test]
async fn embeddings_models_generation_and_workspace() {
    let fake = FakeOpenRouter::start().await.unwrap();
    let c = client(&fake);
    let r = c
        .post_json(
            EMBEDDINGS,
            &json!({"model": "openai/text-embedding-3-small", "input": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["data"][0]["embedding"], json!([0.1, 0.2]));
    assert_eq!(v["usage"]["cost"], 0.00002);
    assert_eq!(v["model"], "openai/text-embedding-3-small");

    let models = c.with_auth(None).get(MODELS).await.unwrap().json();
    let mini = &models["data"][0];
    assert_eq!(mini["id"], "openai/gpt-4o-mini");
    assert_eq!(mini["pricing"]["prompt"], "0.00000015");
    assert_eq!(mini["top_provider"]["max_completion_tokens"], 16384);
    fake.set_models(vec![model_entry("x/y", "0", "0.00001", 1000, 100)]);
    let models = c.get(MODELS).await.unwrap().json();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);

    // Generation: 404 twice, then the chat's own cost.
    fake.set_generation(GenerationScript {
        misses: 2,
        cost: None,
    });
    let id = c.post_json(CHAT, &chat_body(false)).await.unwrap().json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("{GENERATION}?id={id}");
    for _ in 0..2 {
        let r = c.get(&path).await.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"]["message"], "Generation not found");
    }
    let r = c.get(&path).await.unwrap();
    assert_eq!(r.status, 200);
    let d = &r.json()["data"];
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["total_cost"], 0.00123);
    assert_eq!(d["tokens_prompt"], 12);
    assert_eq!(d["provider_name"], "OpenAI");
    assert_eq!(fake.lookups(&id), 3);
    fake.set_generation(GenerationScript {
        misses: 0,
        cost: Some(0.0042),
    });
    let r = c
        .get(&format!("{GENERATION}?id=gen-unknown"))
        .await
        .unwrap();
    assert_eq!(r.json()["data"]["total_cost"], 0.0042);

    // Workspace: management key required; flags and failure scripted.
    let ws = "/api/v1/workspaces/ws_1";
    assert_eq!(c.get(ws).await.unwrap().status, 401);
    let m = c.with_auth(Some(&format!("Bearer {MANAGEMENT_KEY}")));
    let d = m.get(ws).await.unwrap().json();
    assert_eq!(d["data"]["id"], "ws_1");
    assert_eq!(d["data"]["is_observability_io_logging_enabled"], false);
    assert_eq!(d["data"]["is_observability_broadcast_enabled"], false);
    assert_eq!(d["data"]["is_data_discount_logging_enabled"], false);
    fake.set_workspace(WorkspaceScript {
        broadcast: true,
        ..WorkspaceScript::default()
    });
    let d = m.get(ws).await.unwrap().json();
    assert_eq!(d["data"]["is_observability_broadcast_enabled"], true);
    fake.set_workspace(WorkspaceScript {
        fail: true,
        ..WorkspaceScript::default()
    });
    assert_eq!(m.get(ws).await.unwrap().status, 500);

    assert_eq!(c.get("/api/v1/usage").await.unwrap().status, 404);
    assert_eq!(fake.requests_to("/api/v1/usage").len(), 1);
}

#[tokio::test]
async fn curl_h1_and_h2_post_and_stream() {
    let fake = FakeOpenRouter::start().await.unwrap();
    for http2 in [false, true] {
        let mut curl = CurlPost::new(fake.ca_pem_path(), "openrouter.ai", fake.addr());
        if http2 {
            curl = curl.http2();
        }
        let r = curl.post(CHAT, &chat_body(false)).await.unwrap();
        assert_eq!((r.code, r.status), (0, 200), "{r:?}");
        assert_eq!(r.http_version, if http2 { "2" } else { "1.1" });
        assert_eq!(r.json()["usage"]["cost"], 0.00123);
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("x-generation-id: gen-")
        );

        let gate = Gate::new();
        fake.set_chat(ChatScript::default().hold(&gate));
        let mut lines = curl.post_lines(CHAT, &chat_body(true)).await.unwrap();
        lines
            .read_until("\"content\":\"h\"", Duration::from_secs(5))
            .await
            .unwrap();
        gate.open();
        lines
            .read_until("[DONE]", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(lines.wait().await.unwrap(), 0);
        fake.set_chat(ChatScript::default());
    }
}
