//! Build provenance: the commit is resolved at build time from `GIT_COMMIT`, else `git rev-parse
//! HEAD`, else by reading `.git/HEAD` and the ref it names, else `unknown` (a Docker build context
//! often has no git binary, and sometimes no `.git`).
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let git_dir = find_git_dir();
    if let Some(dir) = &git_dir {
        let common = common_dir(dir);
        for path in [dir.join("HEAD"), common.join("packed-refs")] {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        if let Some(reference) = head_ref(dir) {
            let path = common.join(reference);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let commit = env_commit()
        .or_else(git_rev_parse)
        .or_else(|| git_dir.as_deref().and_then(read_head))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TOLLGATE_COMMIT={commit}");
}

fn env_commit() -> Option<String> {
    std::env::var("GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
}

fn git_rev_parse() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status
        .success()
        .then(|| text.trim().to_owned())
        .filter(|c| is_hex(c))
}

/// The git dir holding HEAD: `.git` itself, or for a `git worktree` checkout the directory its
/// `.git` file names (without this a worktree build never re-ran and kept an old commit).
fn find_git_dir() -> Option<PathBuf> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    manifest.ancestors().find_map(|dir| {
        let git = dir.join(".git");
        if git.is_dir() {
            return Some(git);
        }
        let link = std::fs::read_to_string(&git).ok()?;
        let target = PathBuf::from(link.trim().strip_prefix("gitdir: ")?);
        Some(if target.is_absolute() {
            target
        } else {
            dir.join(target)
        })
    })
}

/// Where refs live: a worktree's git dir names the shared one in its `commondir` file.
fn common_dir(git_dir: &Path) -> PathBuf {
    match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(rel) => git_dir.join(rel.trim()),
        Err(_) => git_dir.to_path_buf(),
    }
}

fn head_ref(git_dir: &Path) -> Option<String> {
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    head.trim().strip_prefix("ref: ").map(str::to_owned)
}

fn read_head(git_dir: &Path) -> Option<String> {
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else {
        return is_hex(head).then(|| head.to_owned());
    };
    let common = common_dir(git_dir);
    if let Ok(commit) = std::fs::read_to_string(common.join(reference)) {
        return Some(commit.trim().to_owned()).filter(|c| is_hex(c));
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (commit, name) = line.split_once(' ')?;
        (name == reference && is_hex(commit)).then(|| commit.to_owned())
    })
}

fn is_hex(s: &str) -> bool {
    s.len() >= 7 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
