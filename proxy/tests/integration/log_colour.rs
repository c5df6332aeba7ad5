//! Logs on stderr carry no ANSI colour codes unless stderr is a terminal: container logs are
//! never a terminal. Run through the real binary, with stderr piped as in a container.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// The proxy refusing a bad policy logs one error line (text format) and exits 64.
fn refuse_bad_policy(no_color: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "version = 2\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log-format",
        "text",
        "--policy",
    ])
    .arg(&file)
    .env("RUST_LOG", "info")
    .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("tollgate cannot start"), "{stderr}");
    stderr
}

#[test]
fn piped_stderr_gets_no_escape_codes() {
    let stderr = refuse_bad_policy(None);
    assert!(!stderr.contains('\x1b'), "ANSI escape in {stderr:?}");
}

#[test]
fn no_color_set_gets_no_escape_codes() {
    let stderr = refuse_bad_policy(Some("1"));
    assert!(!stderr.contains('\x1b'), "ANSI escape in {stderr:?}");
}
