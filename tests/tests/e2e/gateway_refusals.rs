//! The LLM gateway's refusals end to end, each an OpenRouter-shaped error that never reaches
//! the upstream: endpoints not enabled (403), credentials (401, key pin 403), restricted models
//! (403 naming the model), body size (413) and JSON (400), Host ≠ SNI (421), rate limit (429 with
//! Retry-After), the concurrency cap, the budget (429/402 without Retry-After), and the workspace
//! privacy check (403 while unsafe, 503 while stale).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tollgate_tests::close;
use tollgate_tests::fake_openrouter::{CHAT, ChatScript, Gate, MANAGEMENT_KEY, WorkspaceScript};
use tollgate_tests::gateway::{Gateway, MODEL, MODEL_2, SETTLE, chat, error_message, sha256_hex};
use tollgate_tests::llm_client::AGENT_KEY;

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_not_enabled_are_403_and_never_forwarded() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    let c = run.client();
    let empty = Bytes::new();
    let json_body = Bytes::from(chat(MODEL).to_string());
    let auth = format!("Bearer {AGENT_KEY}");
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let cases: [(&str, &str, &Bytes); 6] = [
        ("POST", "/api/v1/completions", &json_body),
        ("POST", "/api/v1/responses", &json_body),
        ("GET", "/api/v1/models", &empty),
        ("GET", "/api/v1/credits", &empty),
        ("GET", CHAT, &empty),
        ("DELETE", "/api/v1/keys/abc", &empty),
    ];
    for (method, path, body) in cases {
        for client in [c.clone(), c.h2()] {
            let r = client.send(method, path, &h, body.clone()).await.unwrap();
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
            error_message(403, &r.json()).unwrap();
        }
    }
    assert!(
        gw.fake.requests().iter().all(|r| r.path != CHAT
            && !r.path.starts_with("/api/v1/c")
            && !r.path.starts_with("/api/v1/keys")
            && r.path != "/api/v1/responses"),
        "{:?}",
        gw.fake.requests()
    );
    assert!(
        run.metric("tollgate_llm_denials_total", &[]).await.unwrap() >= 12.0,
        "denials are counted"
    );

    // Enabled by the policy, GET models is forwarded.
    drop(run);
    let spec = gw.spec().set(
        "intercept",
        "endpoints",
        json!(["chat", "embeddings", "models"]),
    );
    let run = gw.start(&spec).await.unwrap();
    let r = run.client().get("/api/v1/models").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["id"], "openai/gpt-4o-mini");
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_is_required_and_pinned_by_hash() {
    let gw = Gateway::new().await.unwrap();
    let spec = gw
        .spec()
        .set("intercept.auth", "api_key_sha256", sha256_hex(AGENT_KEY));
    let run = gw.start(&spec).await.unwrap();
    let c = run.client();
    for client in [c.clone(), c.h2()] {
        let r = client
            .with_auth(None)
            .post_json(CHAT, &chat(MODEL))
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        error_message(401, &r.json()).unwrap();
        let r = client
            .with_auth(Some("Basic dXNlcjpwYXNz"))
            .post_json(CHAT, &chat(MODEL))
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        let r = client
            .with_auth(Some("Bearer sk-or-v1-someone-else"))
            .post_json(CHAT, &chat(MODEL))
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{}", r.text());
        error_message(403, &r.json()).unwrap();
    }
    assert!(gw.fake.requests_to(CHAT).is_empty());
    let r = c.post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "the pinned key passes: {}", r.text());

    // The same pin from the reference's environment variable.
    drop(run);
    let run = gw
        .start_with(
            &gw.spec(),
            &[("OPENROUTER_EXPECTED_API_KEY_SHA256", &sha256_hex("other"))],
        )
        .await
        .unwrap();
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(gw.fake.requests_to(CHAT).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn restricted_models_are_403_in_model_and_models() {
    let gw = Gateway::new().await.unwrap();
    let spec = gw
        .spec()
        .set("intercept.models", "deny", json!(["meta-llama/*"]))
        .price("meta-llama/llama-3.1-8b-instruct", "0.0000001", "0.0000001")
        .price("openai/o1-pro", "0.0000001", "0.0000001");
    let run = gw
        .start_with(
            &spec,
            &[("RESTRICTED_MODELS", &format!("{MODEL_2}, openai/o1*"))],
        )
        .await
        .unwrap();
    let c = run.client();
    let cases: Vec<(Value, &str)> = vec![
        (chat(MODEL_2), MODEL_2),
        (chat("openai/o1-pro"), "openai/o1-pro"),
        (
            chat("meta-llama/llama-3.1-8b-instruct"),
            "meta-llama/llama-3.1-8b-instruct",
        ),
        (chat("openrouter/auto"), "openrouter/auto"),
        (
            chat(&format!("{MODEL}:online")),
            "openai/gpt-4o-mini:online",
        ),
        (
            {
                let mut b = chat(MODEL);
                b["models"] = json!([MODEL, MODEL_2]);
                b
            },
            MODEL_2,
        ),
        (
            {
                let mut b = chat(MODEL);
                b.as_object_mut().unwrap().remove("model");
                b["models"] = json!(["openai/o1-pro", MODEL]);
                b
            },
            "openai/o1-pro",
        ),
    ];
    for (body, named) in &cases {
        for client in [c.clone(), c.h2()] {
            let r = client.post_json(CHAT, body).await.unwrap();
            assert_eq!(r.status, 403, "{body}: {}", r.text());
            let msg = error_message(403, &r.json()).unwrap();
            assert!(msg.contains(named), "the 403 must name {named}: {msg}");
        }
    }
    assert!(gw.fake.requests_to(CHAT).is_empty());
    let r = c.post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_too_large_or_malformed_are_refused() {
    let gw = Gateway::new().await.unwrap();
    let spec = gw.spec().set("intercept", "max_body", "1KiB");
    let run = gw.start(&spec).await.unwrap();
    let c = run.client();
    let mut big = chat(MODEL);
    big["messages"][0]["content"] = json!("x".repeat(2048));
    let auth = format!("Bearer {AGENT_KEY}");
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    for client in [c.clone(), c.h2()] {
        let r = client.post_json(CHAT, &big).await.unwrap();
        assert_eq!(r.status, 413, "{}", r.text());
        error_message(413, &r.json()).unwrap();
        for bad in ["{\"model\": ", "[1,2]", "not json"] {
            let r = client
                .send("POST", CHAT, &h, Bytes::from(bad))
                .await
                .unwrap();
            assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
            error_message(400, &r.json()).unwrap();
        }
    }
    assert!(gw.fake.requests_to(CHAT).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn host_that_is_not_the_sni_is_421() {
    let gw = Gateway::new().await.unwrap();
    let run = gw.start(&gw.spec()).await.unwrap();
    for client in [run.client(), run.client().h2()] {
        for authority in ["evil.example", "api.openai.com:443"] {
            let r = client
                .authority(authority)
                .post_json(CHAT, &chat(MODEL))
                .await
                .unwrap();
            assert_eq!(r.status, 421, "{authority}: {}", r.text());
            error_message(421, &r.json()).unwrap();
        }
    }
    assert!(gw.fake.requests_to(CHAT).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_429_with_retry_after() {
    let gw = Gateway::new().await.unwrap();
    let spec = gw
        .spec()
        .set("intercept.limits", "requests_per_second", 1)
        .set("intercept.limits", "burst", 1);
    let run = gw.start(&spec).await.unwrap();
    let mut limited = None;
    for _ in 0..4 {
        let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = limited.expect("a burst of 1 at 1/s must refuse a quick second request");
    let retry: u64 = r
        .header("retry-after")
        .expect("a rate-limit 429 carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    error_message(429, &r.json()).unwrap();
    assert!(
        run.metric("tollgate_llm_denials_total", &[]).await.unwrap() >= 1.0,
        "{}",
        run.proxy.metrics().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_cap_makes_requests_wait_for_a_slot() {
    // policy/README: `max_concurrent` = "upstream requests in flight at once; further requests
    // wait for a slot".
    let gw = Gateway::new().await.unwrap();
    let spec = gw.spec().set("intercept.limits", "max_concurrent", 2);
    let run = gw.start(&spec).await.unwrap();
    let gate = Gate::new();
    gw.fake.set_chat(ChatScript::default().hold(&gate));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = run.client();
        tasks.push(tokio::spawn(async move {
            c.post_json(CHAT, &chat(MODEL)).await
        }));
    }
    gw.fake.wait_for_requests(CHAT, 2, SETTLE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.fake.requests_to(CHAT).len(), 2, "at most 2 in flight");
    gate.open();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "waiting requests are served: {}", r.text());
    }
    assert_eq!(gw.fake.max_in_flight(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_refusals_are_429_or_402_without_retry_after() {
    let gw = Gateway::new().await.unwrap();
    // MAX_COST_USD replaces the policy's $1: the worst case of a request (~$0.003) cannot fit.
    let run = gw
        .start_with(&gw.spec(), &[("MAX_COST_USD", "0.001")])
        .await
        .unwrap();
    for client in [run.client(), run.client().h2()] {
        let r = client.post_json(CHAT, &chat(MODEL)).await.unwrap();
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(
            r.header("retry-after").is_none(),
            "no Retry-After on budget"
        );
        error_message(429, &r.json()).unwrap();
    }
    assert!(
        gw.fake.requests_to(CHAT).is_empty(),
        "refused before contact"
    );
    let (_, usage) = run.usage_get("/api/v1/usage").await.unwrap();
    let usage: Value = serde_json::from_str(&usage).unwrap();
    assert!(close(usage["max_cost_usd"].as_f64().unwrap(), 0.001));
    assert_eq!(
        run.metric("tollgate_llm_denials_total", &[("reason", "budget")])
            .await
            .unwrap(),
        2.0
    );
    let line = gw
        .wait_inference("a refusal line", |l| l["status_code"] == 429)
        .await
        .unwrap();
    assert_eq!(line["model"], MODEL);

    drop(run);
    let spec = gw
        .spec()
        .budget("0.001")
        .set("intercept.budget", "refusal_status", 402);
    let run = gw.start(&spec).await.unwrap();
    let r = run.client().post_json(CHAT, &chat(MODEL)).await.unwrap();
    assert_eq!(r.status, 402, "{}", r.text());
    assert!(r.header("retry-after").is_none());
    error_message(402, &r.json()).unwrap();
}

async fn wait_status(
    run: &tollgate_tests::gateway::RunningGateway,
    status: u16,
) -> anyhow::Result<Value> {
    tollgate_tests::eventually(SETTLE, &format!("a chat answered {status}"), || async {
        let r = run.client().post_json(CHAT, &chat(MODEL)).await.ok()?;
        (r.status == status).then(|| r.json())
    })
    .await
}

/// The workspace the gateway reads (`intercept.workspace.id` in [`workspace_spec`]).
const WORKSPACE: &str = "/api/v1/workspaces/ws_test-1";

fn workspace_spec(gw: &Gateway) -> tollgate_tests::gateway::GatewaySpec {
    gw.spec()
        .set("intercept.workspace", "id", "ws_test-1")
        .set("intercept.workspace", "refresh", "200ms")
        .set("intercept.workspace", "stale_after", "1s")
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_workspace_is_403_until_it_is_made_safe() {
    let gw = Gateway::new().await.unwrap();
    gw.fake.set_workspace(WorkspaceScript {
        io_logging: true,
        ..WorkspaceScript::default()
    });
    let run = gw
        .start_with(
            &workspace_spec(&gw),
            &[("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)],
        )
        .await
        .unwrap();
    wait_unsafe_naming(&run, "is_observability_io_logging_enabled").await;
    assert!(gw.fake.requests_to(CHAT).is_empty());
    let reads = gw
        .fake
        .wait_for_requests(WORKSPACE, 1, SETTLE)
        .await
        .unwrap();
    assert_eq!(
        reads[0].header("authorization"),
        Some(format!("Bearer {MANAGEMENT_KEY}").as_str())
    );
    // Each change shows once the gateway has read the workspace again: the 403 names the flag
    // that is on now, not the one before.
    for (flags, named) in [
        (
            WorkspaceScript {
                broadcast: true,
                ..WorkspaceScript::default()
            },
            "is_observability_broadcast_enabled",
        ),
        (
            WorkspaceScript {
                data_discount: true,
                ..WorkspaceScript::default()
            },
            "is_data_discount_logging_enabled",
        ),
    ] {
        gw.fake.set_workspace(flags);
        wait_unsafe_naming(&run, named).await;
    }
    gw.fake.set_workspace(WorkspaceScript::default());
    wait_status(&run, 200).await.unwrap();
    assert!(!gw.fake.requests_to(CHAT).is_empty());
    for text in [
        run.proxy.stderr_lines().join("\n"),
        run.proxy.metrics().await.unwrap(),
        run.client().get("/api/v1/usage").await.unwrap().text(),
    ] {
        assert!(!text.contains(MANAGEMENT_KEY), "management key leaked");
    }
}

/// Waits until a chat is refused 403 naming `flag` and no other privacy flag.
async fn wait_unsafe_naming(run: &tollgate_tests::gateway::RunningGateway, flag: &str) {
    const FLAGS: [&str; 3] = [
        "is_observability_io_logging_enabled",
        "is_observability_broadcast_enabled",
        "is_data_discount_logging_enabled",
    ];
    let found = tollgate_tests::eventually(SETTLE, &format!("a 403 naming {flag}"), || async {
        let r = run.client().post_json(CHAT, &chat(MODEL)).await.ok()?;
        let message = error_message(403, &r.json()).ok()?;
        let named: Vec<&str> = FLAGS.into_iter().filter(|f| message.contains(f)).collect();
        (named == [flag]).then_some(message)
    })
    .await;
    if let Err(e) = found {
        panic!("{e:#}\n{}", run.proxy.describe());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_reads_are_never_on_the_request_path() {
    let gw = Gateway::new().await.unwrap();
    // Fresh for a minute: the held reads below must not make the gateway's view stale.
    let spec = workspace_spec(&gw).set("intercept.workspace", "stale_after", "60s");
    let run = gw
        .start_with(&spec, &[("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)])
        .await
        .unwrap();
    wait_status(&run, 200).await.unwrap();
    gw.fake.set_workspace(WorkspaceScript {
        hold: true,
        ..WorkspaceScript::default()
    });
    // A read that arrives after the hold is set stays unanswered until it is released.
    let seen = gw.fake.requests_to(WORKSPACE).len();
    gw.fake
        .wait_for_requests(WORKSPACE, seen + 1, SETTLE)
        .await
        .unwrap();
    for client in [run.client(), run.client().h2()] {
        let r = client.post_json(CHAT, &chat(MODEL)).await.unwrap();
        assert_eq!(
            r.status,
            200,
            "a chat must not wait on a workspace read: {}",
            r.text()
        );
    }
    gw.fake.set_workspace(WorkspaceScript::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_workspace_reads_are_503() {
    let gw = Gateway::new().await.unwrap();
    let run = gw
        .start_with(
            &workspace_spec(&gw),
            &[("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY)],
        )
        .await
        .unwrap();
    wait_status(&run, 200).await.unwrap();
    gw.fake.set_workspace(WorkspaceScript {
        fail: true,
        ..WorkspaceScript::default()
    });
    let body = wait_status(&run, 503).await.unwrap();
    error_message(503, &body).unwrap();
    gw.fake.set_workspace(WorkspaceScript::default());
    wait_status(&run, 200).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_from_the_reference_env() {
    let gw = Gateway::new().await.unwrap();
    gw.fake.set_workspace(WorkspaceScript {
        broadcast: true,
        ..WorkspaceScript::default()
    });
    let run = gw
        .start_with(
            &gw.spec(),
            &[
                ("OPENROUTER_WORKSPACE_ID", "ws_env"),
                ("OPENROUTER_MANAGEMENT_KEY", MANAGEMENT_KEY),
            ],
        )
        .await
        .unwrap();
    wait_status(&run, 403).await.unwrap();
    assert!(!gw.fake.requests_to("/api/v1/workspaces/ws_env").is_empty());
}
