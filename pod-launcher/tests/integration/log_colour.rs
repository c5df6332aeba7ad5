//! tollgate-launch's logs carry no ANSI colour codes unless stderr is a terminal (a launcher
//! running in a Pod writes to container logs, never a terminal). Through the real binary.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs `serve` (which logs one info line once listening) against a kubeconfig whose API server
/// is never contacted; returns stderr up to and including that line.
fn serve_log(no_color: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\n\
         clusters: [{name: c, cluster: {server: \"http://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: x, context: {cluster: c, user: u}}]\n\
         current-context: x\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-launch"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("TOLLGATE_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        // EOF (0) means the launcher exited before logging: fail with what it said.
        if stderr.read_line(&mut line).unwrap() == 0 {
            let status = child.wait().unwrap();
            panic!("tollgate-launch serve exited ({status}) before logging:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains("serving /pending-work") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    seen
}

#[test]
fn piped_stderr_gets_no_escape_codes() {
    let log = serve_log(None);
    assert!(!log.contains('\x1b'), "ANSI escape in {log:?}");
}

#[test]
fn no_color_set_gets_no_escape_codes() {
    let log = serve_log(Some("1"));
    assert!(!log.contains('\x1b'), "ANSI escape in {log:?}");
}
