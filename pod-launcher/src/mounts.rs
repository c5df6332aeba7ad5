//! Extra files for the proxy container only (`--proxy-secret NAME:PATH`, `--proxy-file
//! LOCAL:PATH`): the files `[intercept] extra_ca_file`, `inject_key_file` and
//! `management_key_file` name, which would otherwise have to be baked into the proxy image.
//!
//! Mount paths are checked here, so `render` can mount them without checking again: absolute,
//! no `.` or `..` component, not `/`, and never on, over or under a directory the Pod already
//! mounts into the proxy (policy, certs, data, podinfo, /tmp) or another extra mount.

use std::path::{Path, PathBuf};

use crate::render::{CERTS_DIR, DATA_DIR, PODINFO_DIR, POLICY_DIR, PROXY_TMP_DIR};
use crate::spec::{self, SpecError};

/// The most a `--proxy-file` Secret may carry: the API server refuses Secrets over 1 MiB; keep
/// room for the object's metadata.
pub const MAX_FILES_BYTES: usize = 1024 * 1024 - 16 * 1024;

/// One extra mount into the proxy container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyMount {
    /// A Secret in the task namespace, all of its keys as files in the directory `path`.
    Secret {
        /// The Secret's name.
        name: String,
        /// The directory it is mounted at.
        path: String,
    },
    /// A local file, shipped in the Secret the launcher creates beside the Pod, mounted as the
    /// one file `path`.
    File {
        /// The file's content.
        content: Vec<u8>,
        /// Where the proxy finds it.
        path: String,
    },
}

impl ProxyMount {
    /// The path in the proxy container.
    pub fn path(&self) -> &str {
        match self {
            ProxyMount::Secret { path, .. } | ProxyMount::File { path, .. } => path,
        }
    }
}

/// Why an extra proxy mount was refused (exit code 64).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Not `SOURCE:PATH`.
    #[error("{flag} {value:?}: expected {expected}")]
    Syntax {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What the flag takes.
        expected: &'static str,
    },
    /// A mount path that is relative, `/`, or has `.`/`..`/empty components.
    #[error(
        "{flag} mount path {path:?}: expected an absolute path without '.' or '..' components, not /"
    )]
    Path {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: String,
    },
    /// A mount path on, over or under one the Pod already uses, or another extra mount.
    #[error("{flag} mount path {path:?}: overlaps {other} (choose a path outside it)")]
    Overlap {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: String,
        /// What it overlaps.
        other: String,
    },
    /// The Secret name.
    #[error(transparent)]
    Name(#[from] SpecError),
    /// A `--proxy-file` that cannot be read.
    #[error("--proxy-file {path}: {source}")]
    Read {
        /// The local file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// More `--proxy-file` content than one Secret can hold.
    #[error(
        "--proxy-file: {total} bytes in all; a Secret holds at most {MAX_FILES_BYTES} (use --proxy-secret for large files)"
    )]
    TooLarge {
        /// The total size.
        total: usize,
    },
}

/// The proxy's own mounts, which no extra mount may shadow or sit inside.
const RESERVED: [(&str, &str); 5] = [
    (POLICY_DIR, "the policy mount"),
    (CERTS_DIR, "the certs mount"),
    (DATA_DIR, "the data mount"),
    (PODINFO_DIR, "the podinfo mount"),
    (PROXY_TMP_DIR, "the proxy's /tmp"),
];

/// Parses and checks every `--proxy-secret` and `--proxy-file`, reading the files.
pub fn parse(secrets: &[String], files: &[String]) -> Result<Vec<ProxyMount>, MountError> {
    let mut mounts = Vec::new();
    for value in secrets {
        let (name, path) = split("--proxy-secret", value, "NAME:MOUNTPATH")?;
        let name = spec::dns_name("--proxy-secret", name)?;
        let path = check_path("--proxy-secret", path, &mounts)?;
        mounts.push(ProxyMount::Secret { name, path });
    }
    let mut total = 0usize;
    for value in files {
        let (local, path) = split("--proxy-file", value, "LOCAL:MOUNTPATH")?;
        let path = check_path("--proxy-file", path, &mounts)?;
        let local = Path::new(local);
        let content = std::fs::read(local).map_err(|source| MountError::Read {
            path: local.to_owned(),
            source,
        })?;
        total = total.saturating_add(content.len());
        if total > MAX_FILES_BYTES {
            return Err(MountError::TooLarge { total });
        }
        mounts.push(ProxyMount::File { content, path });
    }
    Ok(mounts)
}

/// Splits at the last ':' (a local file name may hold one; a mount path may not).
fn split<'a>(
    flag: &'static str,
    value: &'a str,
    expected: &'static str,
) -> Result<(&'a str, &'a str), MountError> {
    match value.rsplit_once(':') {
        Some((source, path)) if !source.is_empty() && !path.is_empty() => Ok((source, path)),
        _ => Err(MountError::Syntax {
            flag,
            value: value.to_owned(),
            expected,
        }),
    }
}

fn check_path(
    flag: &'static str,
    path: &str,
    earlier: &[ProxyMount],
) -> Result<String, MountError> {
    let bad = || MountError::Path {
        flag,
        path: path.to_owned(),
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || path.contains(char::is_control)
    {
        return Err(bad());
    }
    let path = format!("/{rest}");
    let reserved = RESERVED.iter().map(|(p, what)| (*p, (*what).to_owned()));
    let extra = earlier
        .iter()
        .map(|m| (m.path(), format!("another mount at {}", m.path())));
    for (other, what) in reserved.chain(extra) {
        if nested(&path, other) || nested(other, &path) {
            return Err(MountError::Overlap {
                flag,
                path,
                other: what,
            });
        }
    }
    Ok(path)
}

/// Whether `inner` is `outer` or below it (component-wise: `/etc/tollgate2` is not below
/// `/etc/tollgate`).
fn nested(inner: &str, outer: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Result<String, MountError> {
        check_path("--proxy-secret", p, &[])
    }

    #[test]
    fn paths_must_be_absolute_and_plain() {
        for bad in [
            "",
            "/",
            "relative/x",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/..",
            "/a/\nb",
        ] {
            assert!(matches!(path(bad), Err(MountError::Path { .. })), "{bad:?}");
        }
        assert_eq!(
            path("/etc/tollgate-extra/").ok().as_deref(),
            Some("/etc/tollgate-extra")
        );
    }

    #[test]
    fn paths_may_not_touch_the_proxys_own_mounts() {
        for bad in [
            "/etc/tollgate",
            "/etc/tollgate/ca.pem",
            "/etc",
            "/certs",
            "/certs/output/x",
            "/var/lib/tollgate/k",
            "/tmp/x",
            "/etc/podinfo",
        ] {
            assert!(
                matches!(path(bad), Err(MountError::Overlap { .. })),
                "{bad:?}"
            );
        }
        assert!(path("/etc/tollgate2/ca.pem").is_ok());
        let earlier = [ProxyMount::Secret {
            name: "s".to_owned(),
            path: "/keys".to_owned(),
        }];
        assert!(check_path("--proxy-file", "/keys/inject", &earlier).is_err());
        assert!(check_path("--proxy-file", "/keys2/inject", &earlier).is_ok());
    }

    #[test]
    fn flags_need_a_source_and_a_path() {
        for bad in ["name", ":/x", "name:", "Bad_Name:/x"] {
            assert!(parse(&[bad.to_owned()], &[]).is_err(), "{bad:?}");
        }
        assert!(parse(&[], &["/nonexistent/file:/x/y".to_owned()]).is_err());
    }
}
