//! The LLM gateway end to end: the real binary terminates TLS for `openrouter.ai` with its
//! per-Pod CA and forwards to the fake OpenRouter. What is forwarded (forced provider, filtered
//! fields and headers, injected key), over hyper and curl, h1 and h2; the CA outputs; the usage
//! API, the usage files and the metrics. Refusals are in `gateway_refusals.rs`, streaming in
//! `gateway_stream.rs`, the budget under load and across restarts in `gateway_budget.rs`.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use tollgate_tests::close;
use tollgate_tests::fake_openrouter::{CHAT, ChatScript, EMBEDDINGS, GENERATION};
use tollgate_tests::gateway::{EMBED_MODEL, Gateway, MODEL, MODEL_2, SETTLE, chat, error_message};
use tollgate_tests::llm_client::AGENT_KEY;

const USAGE_KEYS: [&str; 10] = [
    "budget_remaining_usd",
    "completion_tokens",
    "evaluation_run_id",
    "max_cost_usd",
    "models",
    "prompt_tokens",
    "requests",
    "reserved_usd",
    "served_models",
    "total_cost_usd",
];

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_is_forwarded_with_forced_provider_and_filtered_fields_and_headers() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    let mut body = chat(MODEL);
    body["provider"] = json!({"order": ["Evil"], "zdr": false, "data_collection": "allow"});
    body["transforms"] = json!(["middle-out"]);
    body["plugins"] = json!([{"id": "web"}]);
    body["user"] = json!("agent-42");
    body["temperature"] = json!(0.5);
    let headers = [
        ("x-secret", "1"),
        ("cookie", "session=abc"),
        ("user-agent", "agent-sdk/9.9"),
        ("x-forwarded-for", "10.9.9.9"),
        ("accept", "application/json"),
        ("http-referer", "https://agent.example"),
        ("x-title", "agent"),
        ("x-openrouter-title", "agent run"),
    ];
    for (i, client) in [run.client(), run.client().h2()].into_iter().enumerate() {
        let r = client.post_json_with(CHAT, &body, &headers).await.unwrap();
        assert_eq!(r.status, 200, "{}\n{}", r.text(), run.proxy.describe());
        let v = r.json();
        assert!(v["id"].as_str().unwrap().starts_with("gen-"), "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], "hi!");
        assert_eq!(v["usage"]["cost"], 0.00123);

        let seen = &gw.fake.requests_to(CHAT)[i];
        let fwd = seen.body_json();
        assert_eq!(fwd["provider"]["zdr"], true, "forced zdr: {fwd}");
        assert!(
            !fwd["provider"].to_string().contains("Evil")
                && fwd["provider"].get("data_collection").is_none(),
            "the agent's provider object must be replaced: {fwd}"
        );
        for dropped in ["transforms", "plugins", "user"] {
            assert!(
                fwd.get(dropped).is_none(),
                "{dropped} reached upstream: {fwd}"
            );
        }
        assert_eq!(fwd["model"], MODEL);
        assert_eq!(fwd["temperature"], 0.5);
        assert_eq!(fwd["messages"], body["messages"]);
        assert!(fwd["max_tokens"].as_u64().unwrap() <= 100, "{fwd}");

        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {AGENT_KEY}").as_str())
        );
        for (name, value) in &headers[4..] {
            assert_eq!(seen.header(name), Some(*value), "{name} must be forwarded");
        }
        for name in ["x-secret", "cookie", "x-forwarded-for"] {
            assert!(
                seen.header(name).is_none(),
                "{name} must not be forwarded: {:?}",
                seen.headers
            );
        }
        assert_ne!(seen.header("user-agent"), Some("agent-sdk/9.9"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_is_settled_from_usage_in_files_metrics_and_usage_api() {
    let gw = Gateway::new().await.unwrap();
    let run = gw
        .start_with(&gw.spec(), &[("EVALUATION_RUN_ID", "run-env-7")])
        .await
        .unwrap();
    let id = run
        .client()
        .post_json(CHAT, &chat(MODEL))
        .await
        .unwrap()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let line = gw
        .wait_inference("the chat's line", |l| l["generation_id"] == id.as_str())
        .await
        .unwrap();
    assert_eq!(line["model"], MODEL);
    assert_eq!(line["status_code"], 200);
    assert_eq!(line["cost_usd"], 0.00123);
    assert_eq!(line["settlement_source"], "usage");
    assert_eq!(line["provider"], "OpenAI");
    assert_eq!(line["routed_model"], MODEL);
    assert_eq!(line["prompt_tokens"], 12);
    assert_eq!(line["completion_tokens"], 3);
    assert!(close(line["total_cost_usd"].as_f64().unwrap(), 0.00123));
    assert!(close(
        line["budget_remaining_usd"].as_f64().unwrap(),
        1.0 - 0.00123
    ));
    for key in ["endpoint", "timestamp", "latency_ms", "error"] {
        assert!(line.get(key).is_some(), "{key} missing from {line}");
    }

    let usage = gw
        .wait_usage_file("one request", |u| u["requests"] == 1)
        .await
        .unwrap();
    assert_eq!(sorted_keys(&usage), USAGE_KEYS);
    assert_eq!(usage["evaluation_run_id"], "run-env-7");
    assert!(close(usage["total_cost_usd"].as_f64().unwrap(), 0.00123));
    assert!(close(usage["max_cost_usd"].as_f64().unwrap(), 1.0));
    assert!(close(
        usage["budget_remaining_usd"].as_f64().unwrap(),
        0.99877
    ));
    assert!(close(usage["reserved_usd"].as_f64().unwrap(), 0.0));
    assert_eq!(usage["prompt_tokens"], 12);
    assert_eq!(usage["completion_tokens"], 3);
    assert_eq!(usage["models"][MODEL]["requests"], 1);

    // The usage API: plain HTTP on the usage port, and on the intercepted host.
    let (status, text) = run.usage_get("/api/v1/usage").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let api: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(sorted_keys(&api), USAGE_KEYS);
    assert!(close(api["total_cost_usd"].as_f64().unwrap(), 0.00123));
    assert_eq!(run.usage_get("/healthz").await.unwrap().0, 200);
    // The usage port is read-only: anything but GET is 405 (and changes nothing).
    for method in ["POST", "PUT", "DELETE"] {
        for path in ["/api/v1/usage", "/healthz"] {
            let (status, body) = run.usage_request(method, path).await.unwrap();
            assert_eq!(status, 405, "{method} {path}: {body}");
        }
    }
    for client in [run.client(), run.client().h2()] {
        let r = client.get("/api/v1/usage").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(sorted_keys(&r.json()), USAGE_KEYS);
        assert_eq!(r.json()["requests"], 1);
    }
    assert!(gw.fake.requests_to("/api/v1/usage").is_empty());

    // One structured log line per request.
    let log = run
        .request_logs()
        .into_iter()
        .find(|l| l["status"] == 200)
        .unwrap_or_else(|| panic!("no request line\n{}", run.proxy.describe()));
    assert_eq!(log["model"], MODEL);

    // Metrics.
    let m = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let run = &run;
        async move { run.metric(name, labels).await.unwrap() }
    };
    assert_eq!(m("tollgate_llm_requests_total", &[]).await, 1.0);
    assert!(close(m("tollgate_llm_spend_usd_total", &[]).await, 0.00123));
    assert_eq!(
        m("tollgate_llm_tokens_total", &[("kind", "prompt")]).await,
        12.0
    );
    assert_eq!(
        m("tollgate_llm_tokens_total", &[("kind", "completion")]).await,
        3.0
    );
    assert_eq!(
        m("tollgate_llm_settlements_total", &[("source", "usage")]).await,
        1.0
    );
    assert!(close(m("tollgate_budget_usd", &[]).await, 1.0));
    assert!(close(
        m("tollgate_budget_remaining_usd", &[]).await,
        0.99877
    ));
    assert!(close(m("tollgate_budget_reserved_usd", &[]).await, 0.0));
    let metrics = run.proxy.metrics().await.unwrap();
    assert!(
        metrics.contains(&format!("model=\"{MODEL}\"")),
        "a policy-named model is its own label:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_preferences_come_from_the_policy_and_the_env() {
    let gw = Gateway::new().await.unwrap();
    let per_model = format!("intercept.provider.models.\"{MODEL_2}\"");
    let spec = gw
        .spec()
        .set("intercept.provider", "order", json!(["openai"]))
        .set("intercept.provider", "allow_fallbacks", false)
        .set(&per_model, "order", json!(["anthropic"]));
    let run = gw.start(&spec).await.unwrap();
    let agent = json!({"order": ["Evil"], "allow_fallbacks": true, "zdr": false});
    for (model, provider) in [(MODEL, "OpenAI"), (MODEL_2, "Anthropic")] {
        // Served by a provider in the forced order (another would be a served-provider violation).
        gw.fake
            .set_chat(ChatScript::default().served_provider(provider));
        let mut body = chat(model);
        body["provider"] = agent.clone();
        let r = run.client().post_json(CHAT, &body).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen = gw.fake.requests_to(CHAT);
    let p0 = &seen[0].body_json()["provider"];
    let p1 = &seen[1].body_json()["provider"];
    assert_eq!(
        (&p0["zdr"], &p0["order"], &p0["allow_fallbacks"]),
        (&json!(true), &json!(["openai"]), &json!(false)),
        "{p0}"
    );
    assert_eq!(
        (&p1["zdr"], &p1["order"], &p1["allow_fallbacks"]),
        (&json!(true), &json!(["anthropic"]), &json!(false)),
        "per-model order, inherited allow_fallbacks: {p1}"
    );

    // PROVIDER_ORDER / PROVIDER_ALLOW_FALLBACKS replace the table's values.
    drop(run);
    let run = gw
        .start_with(
            &spec,
            &[
                ("PROVIDER_ORDER", "azure, openai"),
                ("PROVIDER_ALLOW_FALLBACKS", "true"),
            ],
        )
        .await
        .unwrap();
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let p = gw.fake.requests_to(CHAT)[2].body_json()["provider"].clone();
    assert_eq!(
        (&p["zdr"], &p["order"], &p["allow_fallbacks"]),
        (&json!(true), &json!(["azure", "openai"]), &json!(true)),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_h1_and_h2_with_the_port_in_host() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for (http2, version) in [(false, "1.1"), (true, "2")] {
        let mut curl = run.curl();
        if http2 {
            curl = curl.http2();
        }
        let r = curl.post(CHAT, &chat(MODEL)).await.unwrap();
        assert_eq!(
            (r.code, r.status),
            (0, 200),
            "{r:?}\n{}",
            run.proxy.describe()
        );
        assert_eq!(r.http_version, version);
        assert_eq!(r.json()["usage"]["cost"], 0.00123);
    }
    assert_eq!(gw.fake.requests_to(CHAT).len(), 2);
    // hyper with an explicit port in Host / :authority, too.
    let authority = format!("openrouter.ai:{}", run.proxy.sni_addr().port());
    for client in [run.client(), run.client().h2()] {
        let r = client
            .authority(&authority)
            .post_json(CHAT, &chat(MODEL))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_are_forwarded_and_settled() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    let body = json!({"model": EMBED_MODEL, "input": "hello", "dimensions": 2, "user": "x"});
    let r = run.client().post_json(EMBEDDINGS, &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["embedding"], json!([0.1, 0.2]));
    let fwd = gw.fake.requests_to(EMBEDDINGS)[0].body_json().clone();
    assert_eq!(fwd["input"], "hello");
    assert_eq!(fwd["dimensions"], 2);
    assert!(fwd.get("user").is_none(), "{fwd}");
    let line = gw
        .wait_inference("embeddings line", |l| l["model"] == EMBED_MODEL)
        .await
        .unwrap();
    assert_eq!(line["cost_usd"], 0.00002);
    assert_eq!(line["settlement_source"], "usage");
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_files_are_written_before_ready() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    // The harness removed them before the start and looked the moment /readyz first said 200.
    assert_eq!(
        run.missing_at_ready,
        Vec::<&str>::new(),
        "CA files absent when /readyz first answered 200"
    );
    let dir = gw.certs_dir();
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(
        std::fs::read_to_string(dir.join("ridges-ca.crt")).unwrap(),
        ca
    );
    let bundle = std::fs::read_to_string(dir.join("ca-bundle.crt")).unwrap();
    assert!(bundle.contains(ca.trim()), "the bundle holds the CA");
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 10,
        "the bundle holds the system roots too"
    );
    // And the CA is what the gateway's certificate chains to (the client trusts only it).
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_key_replaces_the_agents_and_is_never_shown() {
    const INJECTED: &str = "sk-or-v1-injected-secret-5150";
    let gw = Gateway::new().await.unwrap();
    let spec = gw
        .spec()
        .set("intercept.auth", "inject_key_env", "TG_TEST_KEY");
    let run = gw
        .start_with(&spec, &[("TG_TEST_KEY", INJECTED)])
        .await
        .unwrap();
    gw.fake.push_chat(ChatScript::default().no_usage());
    for client in [run.client(), run.client().h2()] {
        let r = client.post_json(CHAT, &chat(MODEL)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!r.text().contains(INJECTED));
    }
    let want = format!("Bearer {INJECTED}");
    for seen in gw.fake.requests_to(CHAT) {
        assert_eq!(seen.header("authorization"), Some(want.as_str()));
    }
    // The first answer had no usage: the generation lookup carries the injected key too.
    let lookups = gw
        .fake
        .wait_for_requests(GENERATION, 1, SETTLE)
        .await
        .unwrap();
    assert_eq!(lookups[0].header("authorization"), Some(want.as_str()));
    let usage = run.client().get("/api/v1/usage").await.unwrap();
    assert!(!usage.text().contains(INJECTED));
    assert!(!run.proxy.metrics().await.unwrap().contains(INJECTED));
    // (The command line printed by `describe` holds the env; the log is what matters.)
    assert!(!run.proxy.stderr_lines().join("\n").contains(INJECTED));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_error_status_passes_through_and_is_logged() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    gw.fake
        .push_chat(ChatScript::default().error_status(400, "messages: at least one required"));
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        error_message(400, &r.json()).unwrap(),
        "messages: at least one required"
    );
    let line = gw
        .wait_inference("the 400's line", |l| l["status_code"] == 400)
        .await
        .unwrap();
    assert_eq!(line["model"], MODEL);
    // Refused upstream before anything was generated (no generation id): nothing is charged.
    assert!(line["settlement_source"].is_string(), "{line}");
    assert_eq!(line["cost_usd"], 0.0, "{line}");
    let usage = gw
        .wait_usage_file("reserved released", |u| u["reserved_usd"] == 0.0)
        .await
        .unwrap();
    assert!(usage["total_cost_usd"].as_f64().unwrap() < 0.01, "{usage}");
}
