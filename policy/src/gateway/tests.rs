use super::*;
use crate::Policy;

fn pattern(text: &str) -> ModelPattern {
    ModelPattern::parse(text).unwrap()
}

fn policy(allow: &[&str], deny: &[&str]) -> ModelPolicy {
    ModelPolicy {
        allow: allow.iter().map(|p| pattern(p)).collect(),
        deny: deny.iter().map(|p| pattern(p)).collect(),
    }
}

fn gateway(toml: &str) -> GatewaySettings {
    Policy::parse(&format!("version = 1\n{toml}"), "t.toml")
        .unwrap()
        .gateway
}

#[test]
fn glob_star_spans_any_run_including_slashes() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "openai/gpt-4o", true),
        ("*", "", true),
        ("openai/*", "openai/gpt-4o", true),
        ("openai/*", "openai/", true),
        ("openai/*", "openai", false),
        ("openai/*", "anthropic/claude", false),
        ("anthropic/claude-3*", "anthropic/claude-3.5-sonnet", true),
        ("anthropic/claude-3*", "anthropic/claude-2", false),
        ("*/gpt-4o", "openai/gpt-4o", true),
        ("*/gpt-4o", "openai/gpt-4o-mini", false),
        ("*gpt*", "openai/gpt-4o", true),
        ("a*b*c", "a/x/b/y/c", true),
        ("a*b*c", "a/x/b/y/cd", false),
        ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false), // backtracking stays linear
        ("openai/gpt-4?", "openai/gpt-4o", true),
        ("openai/gpt-4?", "openai/gpt-4", false),
        ("OpenAI/*", "openai/GPT-4o", true),
        ("openai/gpt-4o", "openai/gpt-4o", true),
        ("openai/gpt-4o", "openai/gpt-4o-mini", false),
        ("**", "x", true),
    ];
    for &(p, model, expected) in cases {
        assert_eq!(pattern(p).matches(model), expected, "{p:?} vs {model:?}");
    }
    assert!(pattern("openai/gpt-4o").is_exact());
    assert!(!pattern("openai/gpt-4?").is_exact());
}

#[test]
fn model_patterns_refuse_what_cannot_be_a_model() {
    for bad in ["", "openai /gpt", "a,b", "x\ty", &"a".repeat(257)] {
        assert!(ModelPattern::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(pattern("OpenAI/GPT-4o").to_string(), "openai/gpt-4o");
}

#[test]
fn default_allows_plain_models_only() {
    let p = ModelPolicy::default();
    for ok in [
        "openai/gpt-4o",
        "anthropic/claude-3.5-sonnet",
        "meta-llama/llama-3.1-8b-instruct",
        "01-ai/yi_large",
        "OpenAI/GPT-4o",
    ] {
        assert_eq!(p.check(ok), Ok(()), "{ok}");
    }
    let kind = |model: &str| match p.check(model) {
        Err(ModelDenied::NotNamed { kind, .. }) => Some(kind),
        _ => None,
    };
    assert_eq!(kind("openrouter/auto"), Some(AliasKind::Router));
    assert_eq!(kind("OpenRouter/Auto"), Some(AliasKind::Router));
    assert_eq!(
        kind("openrouter/some-stealth-model"),
        Some(AliasKind::Router)
    );
    assert_eq!(kind("@preset/my-preset"), Some(AliasKind::Preset));
    assert_eq!(kind("openai/gpt-4o:online"), Some(AliasKind::Variant));
    assert_eq!(kind("mistralai/mistral-7b:free"), Some(AliasKind::Variant));
    assert_eq!(kind("gpt-4o"), Some(AliasKind::Unusual));
    assert_eq!(kind("a/b/c"), Some(AliasKind::Unusual));
    assert_eq!(kind("~openai/gpt-latest"), Some(AliasKind::Unusual));
    assert_eq!(kind("openrouter/аuto"), Some(AliasKind::Router)); // Cyrillic а
    assert_eq!(kind("openai/gpt-4о"), Some(AliasKind::Unusual)); // Cyrillic о
}

#[test]
fn aliases_need_their_exact_name_in_allow() {
    let globs = policy(&["*", "openrouter/*", "@preset/*", "openai/gpt-4o:*"], &[]);
    for model in ["openrouter/auto", "@preset/x", "openai/gpt-4o:online"] {
        assert!(
            matches!(globs.check(model), Err(ModelDenied::NotNamed { .. })),
            "a glob does not name {model}"
        );
    }
    let named = policy(
        &[
            "openai/*",
            "openrouter/auto",
            "@preset/x",
            "openai/gpt-4o:online",
        ],
        &[],
    );
    assert_eq!(named.check("openrouter/auto"), Ok(()));
    assert_eq!(named.check("@preset/x"), Ok(()));
    assert_eq!(named.check("@Preset/X"), Ok(()), "ascii case is ignored");
    assert_eq!(named.check("openai/gpt-4o:online"), Ok(()));
    assert!(named.check("openai/gpt-4o:nitro").is_err());
    assert!(named.check("@preset/y").is_err());
}

#[test]
fn deny_wins_and_covers_variants() {
    let p = policy(
        &["*", "openai/gpt-4o", "openai/gpt-4o:online"],
        &["openai/gpt-4o", "anthropic/*"],
    );
    let denied_by = |model: &str| match p.check(model) {
        Err(ModelDenied::Denied { pattern, .. }) => Some(pattern),
        _ => None,
    };
    assert_eq!(denied_by("openai/gpt-4o").as_deref(), Some("openai/gpt-4o"));
    assert_eq!(
        denied_by("openai/gpt-4o:online").as_deref(),
        Some("openai/gpt-4o"),
        "deny wins over an exact allow, and reaches the variant through its base id"
    );
    assert_eq!(
        denied_by("ANTHROPIC/claude-3").as_deref(),
        Some("anthropic/*")
    );
    assert_eq!(p.check("openai/gpt-4o-mini"), Ok(()));
}

#[test]
fn allow_list_limits_plain_models() {
    let p = policy(&["openai/*", "anthropic/claude-3*"], &[]);
    assert_eq!(p.check("openai/gpt-4o"), Ok(()));
    assert_eq!(p.check("anthropic/claude-3-haiku"), Ok(()));
    let e = p.check("google/gemini-pro").unwrap_err();
    assert_eq!(e.reason(), "model_not_allowed");
    assert_eq!(e.model(), "google/gemini-pro");
    assert_eq!(
        e.to_string(),
        "model \"google/gemini-pro\" is not allowed by the policy"
    );
    assert!(policy(&[], &[]).check("openai/gpt-4o").is_err());
}

#[test]
fn malformed_ids_are_refused_first() {
    let p = ModelPolicy::default();
    for bad in [
        "",
        " openai/gpt-4o",
        "openai/gpt-4o\n",
        "a b/c",
        &"a/".repeat(200),
    ] {
        let e = p.check(bad).unwrap_err();
        assert_eq!(e.reason(), "model_malformed", "{bad:?}");
    }
}

#[test]
fn every_model_a_request_names_is_checked() {
    // `model` plus each entry of `models`: the first refusal names its model.
    let p = policy(&["*"], &["anthropic/*"]);
    assert_eq!(p.check_all(["openai/gpt-4o", "google/gemini-pro"]), Ok(()));
    let e = p
        .check_all(["openai/gpt-4o", "anthropic/claude-3", "openrouter/auto"])
        .unwrap_err();
    assert_eq!(e.model(), "anthropic/claude-3");
    assert_eq!(e.reason(), "model_denied");
    let e = p
        .check_all(["openai/gpt-4o", "openrouter/auto"])
        .unwrap_err();
    assert_eq!(e.reason(), "model_not_named");
    assert_eq!(
        e.to_string(),
        "model \"openrouter/auto\" is a routing alias; the policy must allow it by its exact name"
    );
}

#[test]
fn endpoints_map_methods_and_paths() {
    assert_eq!(
        Endpoint::from_request("POST", "/api/v1/chat/completions"),
        Some(Endpoint::Chat)
    );
    assert_eq!(
        Endpoint::from_request("GET", "/api/v1/models"),
        Some(Endpoint::Models)
    );
    assert_eq!(Endpoint::from_request("POST", "/api/v1/models"), None);
    assert_eq!(
        Endpoint::from_request("GET", "/api/v1/chat/completions"),
        None
    );
    assert_eq!(
        Endpoint::from_request("POST", "/api/v1/chat/completions/"),
        None
    );
    for e in Endpoint::ALL {
        assert_eq!(Endpoint::from_name(e.name()), Some(e));
        assert_eq!(Endpoint::from_request(e.method(), e.path()), Some(e));
        assert_eq!(e.has_body(), !e.default_fields().is_empty());
        if e.has_body() {
            assert!(e.default_fields().contains(&"model"), "{e}");
            assert!(!e.default_fields().contains(&"provider"), "{e}");
        }
    }
    let set = EndpointSet::default();
    assert!(set.contains(Endpoint::Chat) && set.contains(Endpoint::Embeddings));
    assert!(!set.contains(Endpoint::Models));
}

#[test]
fn upstream_urls() {
    let u = parse::upstream("https://openrouter.ai").unwrap();
    assert_eq!(u, Upstream::default());
    assert_eq!(
        u.url("/api/v1/chat/completions"),
        "https://openrouter.ai/api/v1/chat/completions"
    );
    // The API root OpenAI-style clients use is the same upstream.
    assert_eq!(parse::upstream("https://openrouter.ai/api/v1/").unwrap(), u);
    assert_eq!(parse::upstream("HTTPS://OpenRouter.ai/").unwrap(), u);
    let local = parse::upstream("https://fake.test:8443/prefix/api/v1").unwrap();
    assert_eq!(local.authority(), "fake.test:8443");
    assert_eq!(local.path_prefix, "/prefix");
    assert_eq!(local.to_string(), "https://fake.test:8443/prefix");
    assert_eq!(
        local.url("/api/v1/models"),
        "https://fake.test:8443/prefix/api/v1/models"
    );
    for bad in [
        "openrouter.ai",
        "http://openrouter.ai",
        "ftp://openrouter.ai",
        "https://",
        "https://127.0.0.1",
        "https://[::1]:443",
        "https://openrouter.ai:0",
        "https://openrouter.ai:99999",
        "https://openrouter.ai/?x=1",
        "https://openrouter.ai/#f",
        "https://openrouter.ai/a/../b",
        "https://openrouter.ai//x",
        "https://bad host",
    ] {
        assert!(parse::upstream(bad).is_err(), "{bad}");
    }
    let e = parse::upstream("https://user:sk-secret@openrouter.ai").unwrap_err();
    assert!(!e.contains("sk-secret"), "{e}");
}

#[test]
fn small_parsers() {
    assert_eq!(parse::byte_size("10MiB"), Ok(10 * 1024 * 1024));
    assert_eq!(parse::byte_size("10 MiB"), Ok(10 * 1024 * 1024));
    assert_eq!(parse::byte_size("512KiB"), Ok(512 * 1024));
    assert_eq!(parse::byte_size("1GiB"), Ok(1024 * 1024 * 1024));
    assert_eq!(parse::byte_size("100"), Ok(100));
    assert_eq!(parse::byte_size("100B"), Ok(100));
    for bad in [
        "10MB",
        "0",
        "2GiB",
        "",
        "MiB",
        "-1",
        "1.5MiB",
        "99999999999999999999999",
    ] {
        assert!(parse::byte_size(bad).is_err(), "{bad}");
    }
    let digest = parse::sha256_hex(&"aB".repeat(32)).unwrap();
    assert_eq!(digest, [0xab; 32]);
    let e = parse::sha256_hex("sk-or-v1-secret").unwrap_err();
    assert!(!e.contains("secret"), "{e}");
    assert!(parse::sha256_hex(&"g".repeat(64)).is_err());
    assert_eq!(parse::bool_word("TRUE"), Ok(true));
    assert_eq!(parse::bool_word("0"), Ok(false));
    assert!(parse::bool_word("yes").is_err());
    assert_eq!(parse::comma_list(" a, ,b,"), vec!["a", "b"]);
    assert!(parse::workspace_id("../admin").is_err());
    assert!(parse::workspace_id("ws_1-A").is_ok());
    assert!(parse::env_var_name("1X").is_err());
    assert!(parse::env_var_name("_X1").is_ok());
    assert!(parse::absolute_path("data").is_err());
    assert!(parse::run_id("a\nb").is_err());
    assert_eq!(parse::model_id("OpenAI/GPT-4o"), Ok("openai/gpt-4o".into()));
    assert!(parse::model_id("openai/*").is_err());
}

#[test]
fn version_alone_gives_the_reference_defaults() {
    let g = gateway("");
    assert_eq!(g, GatewaySettings::default());
    assert_eq!(g.max_body, 10 * 1024 * 1024);
    assert_eq!(g.connect_timeout, Duration::from_secs(10));
    assert_eq!(g.read_timeout, Duration::from_secs(600));
    assert_eq!(g.budget.max_cost_micros, None);
    assert_eq!(
        g.budget.limit_micros(),
        Micros(0),
        "no budget spends nothing"
    );
    assert_eq!(g.budget.refusal_status, 429);
    assert_eq!(g.budget.min_completion_tokens, 16);
    assert_eq!(g.budget.data_dir, PathBuf::from("/data"));
    assert_eq!(g.limits.burst.get(), 20);
    assert!(g.workspace.refresh < g.workspace.stale_after);
    assert!(g.workspace.enabled().is_none());
    assert_eq!(
        g.fields.allowed(Endpoint::Chat).len(),
        Endpoint::Chat.default_fields().len()
    );
    assert!(g.fields.allowed(Endpoint::Models).is_empty());
    let prefs = g.provider.for_model("openai/gpt-4o");
    assert!(prefs.order.is_empty() && prefs.allow_fallbacks);
    const _: () = assert!(ProviderPrefs::ZDR);
    assert_eq!(
        gateway("[intercept]\n"),
        g,
        "an empty table is a missing one"
    );
}

#[test]
fn full_gateway_table_compiles_to_typed_values() {
    let g = gateway(
        r#"
[intercept]
hosts = ["openrouter.ai"]
endpoints = ["chat", "models", "messages"]
upstream = "https://fake.test:8443"
max_body = "1MiB"
connect_timeout = "2s"
read_timeout = "1m"
extra_ca_file = "/tmp/ca.pem"
withhold_served_violations = false
[intercept.tls]
ca_cert = "/ca/ca.crt"
ca_key = "/ca/ca.key"
output_dir = "/out"
[intercept.auth]
api_key_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
inject_key_file = "/run/secrets/key"
[intercept.models]
allow = ["openai/*", "openrouter/auto"]
deny = ["openai/o1*"]
[intercept.provider]
order = ["openai", "azure"]
allow_fallbacks = false
[intercept.provider.models."OpenAI/GPT-4o"]
order = ["azure"]
[intercept.fields]
chat = ["model", "messages"]
[intercept.budget]
max_cost_usd = 5.10
refusal_status = 402
min_completion_tokens = 1
evaluation_run_id = "run-1"
data_dir = "/var/lib/tollgate"
[intercept.pricing]
fetch = false
refresh = "1h"
fallback = { prompt = "0.00001", completion = 0.00003 }
[intercept.pricing.models."openai/gpt-4o"]
prompt = "0.0000025"
completion = "0.00001"
request = "0.001"
image = "0.003613"
reasoning = 0.00001
[intercept.workspace]
id = "ws_123"
management_key_file = "/run/secrets/mgmt"
refresh = "30s"
stale_after = "2m"
[intercept.limits]
requests_per_second = 5
max_concurrent = 4
"#,
    );
    let names: Vec<&str> = g.endpoints.iter().map(Endpoint::name).collect();
    assert_eq!(names, ["chat", "messages", "models"]);
    assert_eq!(g.upstream.authority(), "fake.test:8443");
    assert_eq!(g.max_body, 1 << 20);
    assert_eq!(g.connect_timeout, Duration::from_secs(2));
    assert_eq!(g.read_timeout, Duration::from_secs(60));
    assert_eq!(g.extra_ca_file, Some(PathBuf::from("/tmp/ca.pem")));
    assert!(!g.withhold_served_violations);
    assert!(GatewaySettings::default().withhold_served_violations);
    let ca = g.tls.ca.as_ref().unwrap();
    assert_eq!(ca.key, PathBuf::from("/ca/ca.key"));
    assert_eq!(g.tls.output_dir, PathBuf::from("/out"));
    assert_eq!(g.tls.system_roots, TlsSettings::default().system_roots);
    let mut pin = [0u8; 32];
    pin[31] = 1;
    assert_eq!(g.auth.api_key_sha256, Some(pin));
    assert_eq!(
        g.auth.inject,
        Some(KeySource::File("/run/secrets/key".into()))
    );
    assert_eq!(g.models.check("openrouter/auto"), Ok(()));
    assert!(g.models.check("openai/o1-mini").is_err());
    assert!(g.models.check("google/gemini-pro").is_err());
    assert_eq!(g.provider.for_model("openai/gpt-4o").order, ["azure"]);
    assert!(
        !g.provider.for_model("openai/gpt-4o").allow_fallbacks,
        "inherited"
    );
    assert_eq!(
        g.provider.for_model("openai/gpt-4o-mini").order,
        ["openai", "azure"]
    );
    assert!(g.fields.allows(Endpoint::Chat, "messages"));
    assert!(!g.fields.allows(Endpoint::Chat, "temperature"));
    assert!(
        g.fields.allows(Endpoint::Embeddings, "input"),
        "others keep defaults"
    );
    assert_eq!(
        g.budget.max_cost_micros,
        Some(Micros(5_100_000)),
        "a float literal is read exactly"
    );
    assert_eq!(g.budget.refusal_status, 402);
    assert_eq!(g.budget.min_completion_tokens, 1);
    assert_eq!(g.budget.evaluation_run_id, "run-1");
    assert!(!g.pricing.fetch);
    assert_eq!(g.pricing.refresh, Duration::from_secs(3600));
    let fallback = g.pricing.fallback.unwrap();
    assert_eq!(
        (fallback.prompt, fallback.completion),
        (UnitPrice(10_000_000), UnitPrice(30_000_000))
    );
    assert_eq!(fallback.request, UnitPrice(0));
    let price = g.pricing.configured("OpenAI/GPT-4o").unwrap();
    assert_eq!(
        *price,
        Price {
            prompt: UnitPrice(2_500_000),
            completion: UnitPrice(10_000_000),
            request: UnitPrice(1_000_000_000),
            image: UnitPrice(3_613_000_000),
            reasoning: UnitPrice(10_000_000),
        }
    );
    assert_eq!(g.workspace.enabled(), Some("ws_123"));
    assert_eq!(
        g.workspace.management_key.to_string(),
        "file /run/secrets/mgmt"
    );
    assert_eq!(g.limits.requests_per_second.get(), 5);
    assert_eq!(g.limits.burst.get(), 10, "burst defaults to twice the rate");
    assert_eq!(g.limits.max_concurrent.get(), 4);
}

#[test]
fn money_keys_accept_strings_and_numbers_exactly() {
    let budget = |value: &str| {
        Policy::parse(
            &format!("version = 1\n[intercept.budget]\nmax_cost_usd = {value}\n"),
            "t.toml",
        )
        .map(|p| p.gateway.budget.max_cost_micros.map(|m| m.0))
    };
    assert_eq!(budget("\"5.00\"").unwrap(), Some(5_000_000));
    assert_eq!(budget("5").unwrap(), Some(5_000_000));
    assert_eq!(
        budget("0.1").unwrap(),
        Some(100_000),
        "0.1 is not 0.1000000000000000055"
    );
    assert_eq!(budget("1_000.5").unwrap(), Some(1_000_500_000));
    // An exponent is refused in an operator's amount (`2.5e3` for `2.5e-3` is a typo away).
    let e = budget("2.5e-3").unwrap_err();
    assert!(e.message.contains("no exponent"), "{e}");
    assert!(e.message.ends_with("found \"2.5e-3\""), "{e}");
    assert_eq!(budget("0").unwrap(), Some(0));
    let e = budget("0.0000001").unwrap_err();
    assert_eq!(e.key, "intercept.budget.max_cost_usd");
    assert!(e.message.contains("at most 6 decimal places"), "{e}");
    assert!(budget("nan").unwrap_err().message.contains("found \"nan\""));
    assert!(budget("-inf").unwrap_err().message.starts_with("expected"));
    let e = budget("true").unwrap_err();
    assert!(e.message.ends_with("found a boolean"), "{e}");
    let e = budget("-0.5").unwrap_err();
    assert!(e.message.contains("zero or more"), "{e}");
}

#[test]
fn summary_mentions_the_gateway_but_never_a_secret() {
    let mut p = Policy::parse(
        r#"version = 1
[intercept]
hosts = ["openrouter.ai"]
[intercept.auth]
api_key_sha256 = "abababababababababababababababababababababababababababababababab"
inject_key_env = "OPENROUTER_API_KEY"
[intercept.budget]
max_cost_usd = "2.5"
[intercept.models]
deny = ["anthropic/*"]
"#,
        "p.toml",
    )
    .unwrap();
    p.apply_env(&|name| match name {
        "OPENROUTER_MANAGEMENT_KEY" => Some("sk-or-mgmt-SECRET".into()),
        "OPENROUTER_WORKSPACE_ID" => Some("ws_1".into()),
        _ => None,
    })
    .unwrap();
    let s = p.summary();
    assert!(
        s.ends_with(
            "; gateway to https://openrouter.ai: endpoints chat, embeddings; budget 2.5 usd \
             (refusals 429); models allow 1 (*), deny 1 (anthropic/*); key pinned, injected from \
             env OPENROUTER_API_KEY; workspace check ws_1 every 1m; prices 0 set, fetch on; \
             env overrides OPENROUTER_MANAGEMENT_KEY, OPENROUTER_WORKSPACE_ID."
        ),
        "{s}"
    );
    assert!(!s.contains("SECRET") && !s.contains("abab"), "{s}");
    assert!(!format!("{p:?}").contains("SECRET"), "not even in Debug");
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
}

#[test]
fn warnings_point_at_settings_that_refuse_everything() {
    let p = Policy::parse(
        "version = 1\n[intercept]\nhosts = [\"openrouter.ai\"]\nendpoints = []\n[intercept.pricing]\nfetch = false\n",
        "p.toml",
    )
    .unwrap();
    let w = p.warnings();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].contains("max_cost_usd is not set"));
    assert!(
        p.summary().contains("endpoints none; no budget"),
        "{}",
        p.summary()
    );
    // Nothing intercepted: the gateway is idle, nothing to warn about.
    assert!(
        Policy::parse("version = 1\n", "p.toml")
            .unwrap()
            .warnings()
            .is_empty()
    );
}
