#![allow(clippy::unwrap_used)]
use super::*;
use tollgate_policy::Policy;

fn settings(extra: &str) -> GatewaySettings {
    let text = format!("version = 1\n[intercept]\nhosts = [\"openrouter.ai\"]\n{extra}");
    Policy::parse(&text, "t.toml").unwrap().gateway
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn authority_must_name_the_sni_host() {
    let uri: Uri = "/api/v1/chat/completions".parse().unwrap();
    assert!(
        check_authority(
            &uri,
            &headers(&[("host", "openrouter.ai")]),
            "openrouter.ai"
        )
        .is_ok()
    );
    assert!(
        check_authority(
            &uri,
            &headers(&[("host", "OpenRouter.ai:443")]),
            "openrouter.ai"
        )
        .is_ok()
    );
    let r = check_authority(&uri, &headers(&[("host", "evil.test")]), "openrouter.ai").unwrap_err();
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(check_authority(&uri, &HeaderMap::new(), "openrouter.ai").is_err());
    let h2: Uri = "https://evil.test/api/v1/chat/completions".parse().unwrap();
    assert!(check_authority(&h2, &headers(&[("host", "openrouter.ai")]), "openrouter.ai").is_err());
}

#[test]
fn only_enabled_endpoints_pass() {
    let s = settings("");
    assert_eq!(
        endpoint(&Method::POST, "/api/v1/chat/completions", &s).unwrap(),
        Endpoint::Chat
    );
    assert_eq!(
        endpoint(&Method::POST, "/api/v1/embeddings", &s).unwrap(),
        Endpoint::Embeddings
    );
    for (m, p) in [
        (Method::GET, "/api/v1/models"),
        (Method::POST, "/api/v1/completions"),
        (Method::GET, "/api/v1/chat/completions"),
        (Method::POST, "/api/v1/keys"),
    ] {
        let r = endpoint(&m, p, &s).unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_str()),
            (StatusCode::FORBIDDEN, "endpoint"),
            "{m} {p}"
        );
    }
    let s = settings("endpoints = [\"chat\", \"models\"]\n");
    assert_eq!(
        endpoint(&Method::GET, "/api/v1/models", &s).unwrap(),
        Endpoint::Models
    );
}

#[test]
fn authorization_is_required_pinned_and_replaceable() {
    let s = settings("");
    let missing = authorize(&HeaderMap::new(), &s, None).unwrap_err();
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    let ok = authorize(&headers(&[("authorization", "Bearer sk-agent")]), &s, None).unwrap();
    assert_eq!(ok, "Bearer sk-agent");
    let injected = authorize(
        &headers(&[("authorization", "Bearer sk-agent")]),
        &s,
        Some("sk-real"),
    )
    .unwrap();
    assert_eq!(injected, "Bearer sk-real");
    // sha256("sk-agent")
    let digest = ring::digest::digest(&ring::digest::SHA256, b"sk-agent");
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let pinned = settings(&format!("[intercept.auth]\napi_key_sha256 = \"{hex}\"\n"));
    assert!(
        authorize(
            &headers(&[("authorization", "Bearer sk-agent")]),
            &pinned,
            None
        )
        .is_ok()
    );
    let wrong = authorize(
        &headers(&[("authorization", "Bearer sk-other")]),
        &pinned,
        None,
    )
    .unwrap_err();
    assert_eq!(
        (wrong.status, wrong.reason.as_str()),
        (StatusCode::FORBIDDEN, "api-key")
    );
}

#[test]
fn bodies_are_filtered_checked_and_given_the_policy_provider() {
    let s = settings(
        "[intercept.models]\ndeny = [\"openai/gpt-4o\"]\n[intercept.provider]\norder = [\"anthropic\"]\nallow_fallbacks = false\n",
    );
    let body = br#"{"model":"anthropic/claude-3.5-sonnet","messages":[],"stream":true,"provider":{"zdr":false},"transforms":["x"],"max_tokens":10}"#;
    let a = admit_body(Endpoint::Chat, body, &s).unwrap();
    assert_eq!(a.models, vec!["anthropic/claude-3.5-sonnet"]);
    assert!(a.stream);
    // The agent's own `provider` is dropped with the other unlisted fields, then replaced.
    assert_eq!(
        a.dropped,
        vec!["provider".to_owned(), "transforms".to_owned()]
    );
    assert_eq!(
        a.body["provider"],
        json!({"zdr": true, "order": ["anthropic"], "allow_fallbacks": false})
    );
    assert_eq!(a.body["max_tokens"], json!(10));

    let denied = admit_body(
        Endpoint::Chat,
        br#"{"model":"openai/gpt-4o","messages":[]}"#,
        &s,
    )
    .unwrap_err();
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(
        denied.message.contains("openai/gpt-4o"),
        "{}",
        denied.message
    );
    let in_models = admit_body(
        Endpoint::Chat,
        br#"{"model":"a/b","models":["a/b","openai/gpt-4o"]}"#,
        &s,
    )
    .unwrap_err();
    assert!(in_models.message.contains("openai/gpt-4o"));
    let auto = admit_body(Endpoint::Chat, br#"{"model":"openrouter/auto"}"#, &s).unwrap_err();
    assert_eq!(auto.status, StatusCode::FORBIDDEN);
    let online = admit_body(Endpoint::Chat, br#"{"model":"a/b:online"}"#, &s).unwrap_err();
    assert_eq!(online.status, StatusCode::FORBIDDEN);
}

#[test]
fn malformed_bodies_are_client_errors() {
    let s = settings("");
    for body in [
        &b"not json"[..],
        b"[1,2]",
        b"{\"model\": 5}",
        b"{\"model\":\"a/b\",\"models\":\"a/b\"}",
    ] {
        let r = admit_body(Endpoint::Chat, body, &s).unwrap_err();
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let none = admit_body(Endpoint::Chat, b"{\"messages\":[]}", &s).unwrap_err();
    assert_eq!(
        (none.status, none.reason.as_str()),
        (StatusCode::FORBIDDEN, "no-model")
    );
}

#[test]
fn refusals_are_openrouter_shaped() {
    let mut r = Refusal::new(
        StatusCode::TOO_MANY_REQUESTS,
        Reason::RateLimit,
        "slow down",
    );
    r.retry_after = Some(2);
    let response = r.response();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(response.headers()["content-type"], "application/json");
}
