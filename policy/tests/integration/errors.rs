//! One invalid policy per error kind (`tests/bad/*.toml`), each with the exact place and key it
//! must be reported at and a piece of the message. A file added to `tests/bad/` without a row here
//! fails `every_bad_file_has_a_row`, so fixtures and expectations cannot drift apart.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tollgate_policy::{Policy, PolicyError};

/// (file, line, column, key, message substring)
const CASES: &[(&str, usize, usize, &str, &str)] = &[
    (
        "capture-empty-ports.toml",
        5,
        3,
        "capture.allow[0].ports",
        "expected at least one port, found an empty list",
    ),
    (
        "capture-unknown-key.toml",
        4,
        32,
        "capture.deny[0]",
        "unknown key `port`, expected `cidr` or `ports`",
    ),
    (
        "syntax-error.toml",
        4,
        8,
        "",
        "invalid toml: unclosed table, expected `]`",
    ),
    (
        "missing-version.toml",
        1,
        1,
        "",
        "missing key `version`, expected `version = 1`",
    ),
    (
        "wrong-version.toml",
        2,
        11,
        "version",
        "unsupported policy version 2, expected 1",
    ),
    (
        "unknown-top-level-key.toml",
        3,
        1,
        "",
        "unknown key `allowlist`, expected one of `version`, `phase`",
    ),
    (
        "unknown-nested-key.toml",
        6,
        1,
        "tunnel",
        "unknown key `conect_timeout`, expected one of `allow`",
    ),
    (
        "wrong-type.toml",
        5,
        9,
        "tunnel.allow",
        "expected an array, found string \"pypi.org\"",
    ),
    (
        "bad-phase.toml",
        3,
        9,
        "phase",
        "expected \"agent\" or \"verification\", found \"open\"",
    ),
    (
        "invalid-host-chars.toml",
        5,
        22,
        "tunnel.allow[1]",
        "invalid label \"bad host\"",
    ),
    (
        "bare-star-allow.toml",
        5,
        10,
        "tunnel.allow[0]",
        "a bare \"*\" is not allowed in the agent-phase allow list",
    ),
    (
        "bare-star-intercept.toml",
        5,
        27,
        "intercept.hosts[1]",
        "a bare \"*\" is not allowed in the intercept list",
    ),
    (
        "bare-star-hosts-key.toml",
        4,
        1,
        "hosts.\"*\"",
        "a bare \"*\" is not allowed as a hosts key",
    ),
    (
        "ip-literal-host.toml",
        5,
        9,
        "tunnel.deny[0]",
        "expected a host name, found an ip address",
    ),
    (
        "wildcard-in-middle.toml",
        5,
        10,
        "tunnel.allow[0]",
        "\"*\" is only allowed as the whole first label",
    ),
    (
        "duplicate-pattern.toml",
        8,
        5,
        "tunnel.allow[2]",
        "duplicate pattern \"PyPI.org.\", already listed at line 6",
    ),
    (
        "duplicate-hosts-key.toml",
        7,
        1,
        "hosts.\"PyPI.org.\"",
        "duplicate pattern \"PyPI.org.\", already listed at line 4",
    ),
    (
        "bad-duration.toml",
        5,
        19,
        "tunnel.connect_timeout",
        "expected a duration such as \"5s\" or \"10m\", found \"fast\"",
    ),
    (
        "zero-duration.toml",
        5,
        16,
        "tunnel.idle_timeout",
        "expected a duration greater than zero, found \"0s\"",
    ),
    (
        "bad-pin-ip.toml",
        5,
        22,
        "hosts.\"pypi.org\".pin[1]",
        "expected an ip address such as \"192.0.2.10\"",
    ),
    (
        "ech-not-a-boolean.toml",
        5,
        7,
        "hosts.\"cdn.example\".ech",
        "expected a boolean, found string \"yes\"",
    ),
    (
        "empty-pin-list.toml",
        5,
        7,
        "hosts.\"pypi.org\".pin",
        "expected at least one ip address, found an empty list",
    ),
    (
        "bad-cidr.toml",
        6,
        17,
        "hosts.\"mirror.test\".allow_ranges[0]",
        "found \"10.0.0.0/33\"",
    ),
    (
        "port-zero.toml",
        5,
        8,
        "hosts.\"mirror.test\".port",
        "expected a port from 1 to 65535, found 0",
    ),
    // The gateway's settings: [intercept] beyond hosts, and its sub-tables.
    (
        "unknown-endpoint.toml",
        5,
        22,
        "intercept.endpoints[1]",
        "expected one of chat, embeddings, completions, responses, messages, models, found \"images\"",
    ),
    (
        "duplicate-endpoint.toml",
        7,
        3,
        "intercept.endpoints[2]",
        "duplicate endpoint \"chat\", already listed at line 5",
    ),
    (
        "upstream-not-https.toml",
        5,
        12,
        "intercept.upstream",
        "expected an https url (the gateway forwards only over tls), found \"http://openrouter.ai\"",
    ),
    (
        "upstream-credentials.toml",
        5,
        12,
        "intercept.upstream",
        "expected no user name or password in the url (not shown); keys belong in [intercept.auth]",
    ),
    (
        "bad-upstream-port.toml",
        5,
        12,
        "intercept.upstream",
        "expected a port from 1 to 65535 in the url, found \"https://openrouter.ai:0\"",
    ),
    (
        "bad-max-body.toml",
        5,
        12,
        "intercept.max_body",
        "expected a size such as 10485760 or \"10MiB\" (units B, KiB, MiB, GiB), found \"10MB\"",
    ),
    (
        "relative-path.toml",
        5,
        17,
        "intercept.extra_ca_file",
        "expected an absolute path such as \"/etc/tollgate/ca.pem\", found \"certs/ca.pem\"",
    ),
    (
        "ca-cert-without-key.toml",
        5,
        11,
        "intercept.tls.ca_cert",
        "expected `ca_key` too: give both ca files, or neither to generate a ca at start",
    ),
    (
        "bad-sha256.toml",
        5,
        18,
        "intercept.auth.api_key_sha256",
        "expected the key's sha-256 as 64 hexadecimal characters, found 21 characters (not shown)",
    ),
    (
        "inject-key-both.toml",
        6,
        19,
        "intercept.auth.inject_key_file",
        "expected `inject_key_env` or `inject_key_file`, not both",
    ),
    (
        "bad-env-var-name.toml",
        5,
        22,
        "intercept.workspace.management_key_env",
        "expected an environment variable name such as \"OPENROUTER_API_KEY\", found \"sk-or-mgmt-key\"",
    ),
    (
        "bad-model-pattern.toml",
        5,
        9,
        "intercept.models.deny[0]",
        "expected a model id or pattern without spaces or commas, found ',' in \"openai/*,anthropic/*\"",
    ),
    (
        "duplicate-model-pattern.toml",
        6,
        3,
        "intercept.models.allow[1]",
        "duplicate pattern \"OpenAI/*\", already listed at line 5",
    ),
    (
        "bad-provider-name.toml",
        5,
        23,
        "intercept.provider.order[1]",
        "expected a provider name such as \"anthropic\" (no spaces or commas), found \"google vertex\"",
    ),
    (
        "duplicate-provider.toml",
        7,
        3,
        "intercept.provider.order[2]",
        "duplicate provider \"anthropic\", already listed at line 5",
    ),
    (
        "provider-model-glob.toml",
        4,
        1,
        "intercept.provider.models.\"anthropic/*\"",
        "expected an exact model id such as \"openai/gpt-4o\", found the pattern \"anthropic/*\"",
    ),
    (
        "duplicate-model-table.toml",
        8,
        1,
        "intercept.pricing.models.\"OpenAI/GPT-4o\"",
        "duplicate model \"OpenAI/GPT-4o\", already listed at line 4",
    ),
    (
        "fields-without-model.toml",
        5,
        8,
        "intercept.fields.chat",
        "expected the list to include \"model\": without it every request would be refused",
    ),
    (
        "fields-with-provider.toml",
        5,
        30,
        "intercept.fields.chat[2]",
        "expected fields the agent may set; `provider` is always replaced by the gateway",
    ),
    (
        "budget-not-a-number.toml",
        5,
        16,
        "intercept.budget.max_cost_usd",
        "expected an amount in usd such as \"5.00\" or \"0.0000025\", found \"five dollars\"",
    ),
    (
        "budget-negative.toml",
        5,
        16,
        "intercept.budget.max_cost_usd",
        "expected an amount of zero or more, found \"-1\"",
    ),
    (
        "budget-too-precise.toml",
        5,
        16,
        "intercept.budget.max_cost_usd",
        "expected at most 6 decimal places (1 micro-usd), found \"0.0000001\"",
    ),
    (
        "budget-too-large.toml",
        5,
        16,
        "intercept.budget.max_cost_usd",
        "expected at most 1000000 usd, found \"5000000\"",
    ),
    (
        "budget-wrong-type.toml",
        5,
        16,
        "intercept.budget.max_cost_usd",
        "expected an amount in usd such as \"5.00\", found a boolean",
    ),
    (
        "price-exponent.toml",
        5,
        10,
        "intercept.pricing.models.\"openai/gpt-4o\".prompt",
        "expected a plain decimal amount of usd such as \"5.00\" or \"0.0000025\" (no sign, no exponent, digits on both sides of the point), found \"2.5e-6\"",
    ),
    (
        "bad-refusal-status.toml",
        5,
        18,
        "intercept.budget.refusal_status",
        "expected 429 or 402, found 403",
    ),
    (
        "zero-min-completion-tokens.toml",
        5,
        25,
        "intercept.budget.min_completion_tokens",
        "expected an integer from 1 to 1000000, found 0",
    ),
    (
        "bad-evaluation-run-id.toml",
        5,
        21,
        "intercept.budget.evaluation_run_id",
        "expected a run id of at most 256 characters without control characters, found \"run\\n42\"",
    ),
    (
        "price-too-precise.toml",
        5,
        10,
        "intercept.pricing.models.\"openai/gpt-4o\".prompt",
        "expected at most 12 decimal places (1 pico-usd), found \"0.0000000000001\"",
    ),
    (
        "price-missing-completion.toml",
        5,
        12,
        "intercept.pricing.fallback",
        "missing key `completion`",
    ),
    (
        "bad-workspace-id.toml",
        5,
        6,
        "intercept.workspace.id",
        "expected a workspace id of letters, digits, '-' and '_', found \"../keys\"",
    ),
    (
        "stale-before-refresh.toml",
        6,
        15,
        "intercept.workspace.stale_after",
        "expected stale_after (1m) to be longer than refresh (5m), or every read would be stale",
    ),
    (
        "zero-rate-limit.toml",
        5,
        23,
        "intercept.limits.requests_per_second",
        "expected an integer from 1 to 1000000, found 0",
    ),
    (
        "dns-bare-star-allow.toml",
        4,
        10,
        "dns.allow[0]",
        "a bare \"*\" is not allowed in dns.allow",
    ),
    (
        "dns-empty-upstream.toml",
        4,
        12,
        "dns.upstream",
        "expected at least one resolver, found an empty list",
    ),
    (
        "dns-bad-upstream.toml",
        4,
        30,
        "dns.upstream[1]",
        "expected a resolver address such as",
    ),
    (
        "dns-zero-rate.toml",
        4,
        22,
        "dns.queries_per_second",
        "expected an integer from 1 to 100000, found 0",
    ),
];

fn bad_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad")
}

fn load(file: &str) -> PolicyError {
    let path = bad_dir().join(file);
    match Policy::load(&path) {
        Ok(_) => panic!("{file} should not compile"),
        Err(e) => e,
    }
}

#[test]
fn each_bad_file_reports_its_place_key_and_reason() {
    let mut failures = Vec::new();
    for &(file, line, column, key, message) in CASES {
        let e = load(file);
        let ok =
            e.line == line && e.column == column && e.key == key && e.message.contains(message);
        if !ok {
            failures.push(format!(
                "{file}: expected {line}:{column} key {key:?} message containing {message:?}\n    got {}:{} key {:?}: {}",
                e.line, e.column, e.key, e.message
            ));
        }
        // The one-line form: origin:line:col: [key: ]message.
        let path = bad_dir().join(file);
        let prefix = if key.is_empty() {
            format!("{}:{line}:{column}: ", path.display())
        } else {
            format!("{}:{line}:{column}: {key}: ", path.display())
        };
        assert!(e.to_string().starts_with(&prefix), "{file}: {e}");
        assert!(!e.to_string().contains('\n'), "{file}: one line only: {e}");
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_bad_file_has_a_row() {
    let mut files: Vec<String> = std::fs::read_dir(bad_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    files.sort();
    let mut rows: Vec<String> = CASES.iter().map(|c| c.0.to_owned()).collect();
    rows.sort();
    assert_eq!(files, rows);
}

#[test]
fn messages_are_short_lowercase_words() {
    for &(file, ..) in CASES {
        let message = load(file).message;
        let first = message.chars().next().unwrap();
        assert!(!first.is_uppercase(), "{file}: {message}");
        assert!(message.len() < 200, "{file}: {message}");
    }
}

#[test]
fn parse_names_its_origin_and_embedded_errors_read_the_same() {
    let e = Policy::parse("version = 1\nphase = \"later\"\n", "<embedded>").unwrap_err();
    assert_eq!(
        e.to_string(),
        "<embedded>:2:9: phase: expected \"agent\" or \"verification\", found \"later\""
    );
}

#[test]
fn other_schema_errors_are_located_too() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "version = \"1\"\n",
            "version",
            "expected an integer, found string \"1\"",
        ),
        (
            "version = 1\n[hosts.\"a.test\"]\nport = 70000\n",
            "hosts.\"a.test\".port",
            "found 70000",
        ),
        (
            "version = 1\n[hosts.\"a.test\"]\nbogus = 1\n",
            "hosts.\"a.test\"",
            "unknown key `bogus`",
        ),
        (
            "version = 1\n[tunnel]\nallow = [\"a.test\", 3]\n",
            "tunnel.allow[1]",
            "expected a string, found integer `3`",
        ),
        (
            "version = 1\n[intercept]\nhosts = [\"*.\"]\n",
            "intercept.hosts[0]",
            "empty host name",
        ),
        (
            "version = 1\n[tunnel]\nconnect_timeout = 5\n",
            "tunnel.connect_timeout",
            "expected a string, found integer `5`",
        ),
        (
            "version = 1\ntunnel = 3\n",
            "tunnel",
            "expected a table, found integer `3`",
        ),
    ];
    for &(text, key, message) in cases {
        let e = Policy::parse(text, "t.toml").unwrap_err();
        assert!(e.line > 0, "{text:?}: {e}");
        assert_eq!(e.key, key, "{text:?}: {e}");
        assert!(e.message.contains(message), "{text:?}: {e}");
    }
}

#[test]
fn secrets_in_bad_files_are_not_echoed() {
    // Someone may paste a key where a url or a digest belongs; errors end up in logs.
    for file in ["upstream-credentials.toml", "bad-sha256.toml"] {
        let e = load(file).to_string();
        assert!(!e.contains("sk-or"), "{file}: {e}");
    }
}

#[test]
fn gateway_schema_errors_are_located_too() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "version = 1\n[intercept.budget]\nmax_cost = 5\n",
            "intercept.budget",
            "unknown key `max_cost`, expected one of `max_cost_usd`",
        ),
        (
            "version = 1\n[intercept.provider.models.\"a/b\"]\nordr = []\n",
            "intercept.provider.models.\"a/b\"",
            "unknown key `ordr`",
        ),
        (
            "version = 1\n[intercept.pricing]\nfetch = \"yes\"\n",
            "intercept.pricing.fetch",
            "expected a boolean, found string \"yes\"",
        ),
        (
            "version = 1\n[intercept.fields]\nmodels = [\"model\"]\n",
            "intercept.fields",
            "unknown key `models`",
        ),
        (
            "version = 1\n[intercept]\nmax_body = -5\n",
            "intercept.max_body",
            "found -5",
        ),
        (
            "version = 1\n[intercept.pricing.models.\"a/b\"]\nprompt = [1]\ncompletion = 1\n",
            "intercept.pricing.models.\"a/b\".prompt",
            "found an array",
        ),
        (
            "version = 1\n[intercept.limits]\nburst = 1.5\n",
            "intercept.limits.burst",
            "expected an integer",
        ),
        (
            "version = 1\n[intercept.workspace]\nmanagement_key_env = \"K\"\nmanagement_key_file = \"/k\"\n",
            "intercept.workspace.management_key_file",
            "not both",
        ),
        (
            "version = 1\n[intercept.tls]\nca_key = \"/k\"\n",
            "intercept.tls.ca_key",
            "expected `ca_cert` too",
        ),
    ];
    for &(text, key, message) in cases {
        let e = Policy::parse(text, "t.toml").unwrap_err();
        assert!(e.line > 0, "{text:?}: {e}");
        assert_eq!(e.key, key, "{text:?}: {e}");
        assert!(e.message.contains(message), "{text:?}: {e}");
    }
}
