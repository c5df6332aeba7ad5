//! One invalid policy per error kind (`tests/bad/*.toml`), each with the exact place and key it
//! must be reported at and a piece of the message. A file added to `tests/bad/` without a row here
//! fails `every_bad_file_has_a_row`, so fixtures and expectations cannot drift apart.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tollgate_policy::{Policy, PolicyError};

/// (file, line, column, key, message substring)
const CASES: &[(&str, usize, usize, &str, &str)] = &[
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
