//! The binary's command line: `check`, `--version`, and refusing to start on a bad policy.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn check_accepts_every_example_policy() {
    let files = examples();
    assert!(
        files.len() >= 2,
        "expected example policies, found {files:?}"
    );
    for file in files {
        let out = tollgate().arg("check").arg(&file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout} {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("ok: "), "{stdout}");
    }
}

#[test]
fn check_rejects_a_bad_policy_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "version = 1\n\n[tunnel]\nallow = [\"*\"]\n").unwrap();
    let out = tollgate().arg("check").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:4:"), "{stderr}");
    assert!(stderr.contains("tunnel.allow[0]"), "{stderr}");
}

#[test]
fn run_refuses_to_start_on_a_bad_policy_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "version = 2\n").unwrap();
    let out = tollgate()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--policy",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("version"));
}

#[test]
fn version_names_the_commit() {
    let out = tollgate().arg("--version").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("tollgate "), "{stdout}");
    assert!(stdout.contains("(commit "), "{stdout}");
}
