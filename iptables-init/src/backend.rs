//! The iptables binaries: finding them, choosing legacy or nft, and running `-save` and
//! `-restore --noflush`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cli::BackendChoice;
use crate::error::Error;
use crate::family::Family;
use crate::restore::Live;

/// Which kernel interface the iptables tools drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// x_tables (`iptables-legacy`).
    Legacy,
    /// nf_tables through the iptables syntax (`iptables-nft`).
    Nft,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        })
    }
}

/// The save/restore pair of one backend and family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    /// Backend.
    pub backend: Backend,
    /// Family.
    pub family: Family,
    /// `iptables-nft-save` or equivalent.
    pub save: PathBuf,
    /// `iptables-nft-restore` or equivalent.
    pub restore: PathBuf,
}

impl Tools {
    /// Finds the tools: `<prefix>-<backend>-save/-restore`, else the unsuffixed
    /// `<prefix>-save/-restore` when its `--version` says it is that backend.
    pub fn find(backend: Backend, family: Family) -> Result<Tools, Error> {
        let prefix = family.tool_prefix();
        let pick = |what: &str| -> Option<PathBuf> {
            if let Some(p) = which(&format!("{prefix}-{backend}-{what}")) {
                return Some(p);
            }
            let plain = which(&format!("{prefix}-{what}"))?;
            (version_backend(&plain) == Some(backend)).then_some(plain)
        };
        match (pick("save"), pick("restore")) {
            (Some(save), Some(restore)) => Ok(Tools {
                backend,
                family,
                save,
                restore,
            }),
            _ => Err(Error::MissingBinary(format!(
                "{prefix}-{backend}-save and {prefix}-{backend}-restore are needed for the {family} rules \
                 (--backend {backend}) but are not on PATH{}",
                match family {
                    Family::V4 => String::new(),
                    Family::V6 =>
                        " (the kernel has IPv6; --ipv6 off skips it, unsafe on dual-stack Pods)"
                            .into(),
                }
            ))),
        }
    }

    /// The command that applies a script, as shown to the operator.
    pub fn restore_command(&self) -> String {
        format!(
            "{} {}",
            self.restore.display(),
            restore_args(self.backend).join(" ")
        )
    }

    /// Reads the current rules (all tables the kernel has for this family).
    pub fn save(&self) -> Result<Live, Error> {
        let out = Command::new(&self.save)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::ReadRules {
                family: self.family,
                tool: self.save.display().to_string(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(Error::ReadRules {
                family: self.family,
                tool: self.save.display().to_string(),
                detail: failure(&out),
            });
        }
        Ok(Live::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Applies `script` in one transaction; the error is the tool's message.
    pub fn restore(&self, script: &str) -> Result<(), String> {
        let mut child = Command::new(&self.restore)
            .args(restore_args(self.backend))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.restore.display()))?;
        // A tool that dies early breaks the pipe: its exit status and stderr say more than EPIPE.
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        match written {
            _ if !out.status.success() => Err(failure(&out)),
            Some(Err(e)) => Err(format!("writing to {}: {e}", self.restore.display())),
            _ => Ok(()),
        }
    }
}

/// `--noflush`: leave everyone else's rules alone. Legacy also takes the xtables lock, waiting
/// up to 10 s for it (the nft backend has no lock and ignores the flag).
fn restore_args(backend: Backend) -> Vec<&'static str> {
    match backend {
        Backend::Legacy => vec!["--noflush", "--wait=10"],
        Backend::Nft => vec!["--noflush"],
    }
}

/// Resolves `--backend`. `auto` follows Istio: existing legacy rules (in either family) mean
/// something already programs x_tables, so join it; otherwise nft when its tools run; otherwise
/// legacy. Returns the backend and why it was chosen.
pub fn choose(choice: BackendChoice, ipv6: bool) -> Result<(Backend, String), Error> {
    match choice {
        BackendChoice::Legacy => return Ok((Backend::Legacy, "--backend legacy".into())),
        BackendChoice::Nft => return Ok((Backend::Nft, "--backend nft".into())),
        BackendChoice::Auto => {}
    }
    let mut families = vec![Family::V4];
    if ipv6 {
        families.push(Family::V6);
    }
    let legacy_rules: usize = families
        .iter()
        .filter_map(|f| Tools::find(Backend::Legacy, *f).ok())
        .filter_map(|t| t.save().ok())
        .map(|live| live.rule_count())
        .sum();
    if legacy_rules > 0 {
        return Ok((
            Backend::Legacy,
            format!("auto: {legacy_rules} legacy rule(s) already present"),
        ));
    }
    if Tools::find(Backend::Nft, Family::V4).is_ok_and(|t| t.save().is_ok()) {
        return Ok((Backend::Nft, "auto: no legacy rules, nft usable".into()));
    }
    if Tools::find(Backend::Legacy, Family::V4).is_ok() {
        return Ok((
            Backend::Legacy,
            "auto: nft not usable, legacy available".into(),
        ));
    }
    Err(Error::MissingBinary(
        "no usable iptables found: install the iptables package (iptables-nft-restore or \
         iptables-legacy-restore, and the ip6tables ones) in the init image"
            .into(),
    ))
}

/// The backend an unsuffixed tool reports in `--version` (`(nf_tables)` or `(legacy)`; iptables
/// before 1.8 printed neither and is legacy).
fn version_backend(tool: &Path) -> Option<Backend> {
    let out = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(if text.contains("nf_tables") {
        Backend::Nft
    } else {
        Backend::Legacy
    })
}

/// Looks `name` up in `PATH` (or the usual sbin/bin directories when `PATH` is unset).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn failure(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if stderr.is_empty() {
        format!("exited with {}", out.status)
    } else {
        format!("{stderr} ({})", out.status)
    }
}
