//! `[intercept.tls]`, `[intercept.auth]`, `[intercept.workspace]`: who the gateway is to the
//! agent, what the agent must present, and the upstream account's privacy check. Only where
//! secrets live is compiled, never a secret.

use std::path::PathBuf;

use toml::Spanned;

use crate::compile::{checked, duration, optional};
use crate::error::{PolicyError, Source};
use crate::gateway::{AuthSettings, CaFiles, KeySource, TlsSettings, WorkspaceSettings, parse};
use crate::raw::{RawAuth, RawTls, RawWorkspace};

/// Compiles `[intercept.tls]`: a CA is loaded only when both files are named.
pub(super) fn tls(src: Source<'_>, raw: &RawTls) -> Result<TlsSettings, PolicyError> {
    let defaults = TlsSettings::default();
    let path = |key: &str, value: Option<&Spanned<String>>| {
        optional(src, key, value, parse::absolute_path)
    };
    let ca = match (&raw.ca_cert, &raw.ca_key) {
        (Some(cert), Some(key)) => Some(CaFiles {
            cert: checked(src, "intercept.tls.ca_cert", cert, parse::absolute_path)?,
            key: checked(src, "intercept.tls.ca_key", key, parse::absolute_path)?,
        }),
        (None, None) => None,
        (Some(cert), None) => return Err(pair_error(src, "ca_cert", cert, "ca_key")),
        (None, Some(key)) => return Err(pair_error(src, "ca_key", key, "ca_cert")),
    };
    Ok(TlsSettings {
        ca,
        output_dir: path("intercept.tls.output_dir", raw.output_dir.as_ref())?
            .unwrap_or(defaults.output_dir),
        system_roots: path("intercept.tls.system_roots", raw.system_roots.as_ref())?
            .unwrap_or(defaults.system_roots),
    })
}

/// A CA certificate without its key (or the reverse) cannot sign anything.
fn pair_error(src: Source<'_>, given: &str, at: &Spanned<String>, missing: &str) -> PolicyError {
    src.error(
        at.span(),
        format!("intercept.tls.{given}"),
        format!(
            "expected `{missing}` too: give both ca files, or neither to generate a ca at start"
        ),
    )
}

/// Compiles `[intercept.auth]`.
pub(super) fn auth(src: Source<'_>, raw: &RawAuth) -> Result<AuthSettings, PolicyError> {
    Ok(AuthSettings {
        api_key_sha256: optional(
            src,
            "intercept.auth.api_key_sha256",
            raw.api_key_sha256.as_ref(),
            parse::sha256_hex,
        )?,
        inject: key_source(
            src,
            "intercept.auth",
            ("inject_key_env", raw.inject_key_env.as_ref()),
            ("inject_key_file", raw.inject_key_file.as_ref()),
        )?,
    })
}

/// Compiles `[intercept.workspace]`; the check is on only with an `id` (here or from
/// `OPENROUTER_WORKSPACE_ID`), and `stale_after` must leave room for at least one refresh.
pub(super) fn workspace(
    src: Source<'_>,
    raw: &RawWorkspace,
) -> Result<WorkspaceSettings, PolicyError> {
    let defaults = WorkspaceSettings::default();
    let refresh = duration(
        src,
        "intercept.workspace.refresh",
        raw.refresh.as_ref(),
        defaults.refresh,
    )?;
    let stale_after = duration(
        src,
        "intercept.workspace.stale_after",
        raw.stale_after.as_ref(),
        defaults.stale_after,
    )?;
    // Point at whichever of the two the file wrote (stale_after when both are); the defaults
    // themselves are in order, so one of them was written whenever this fails.
    let written = match (&raw.stale_after, &raw.refresh) {
        (Some(at), _) => Some(("intercept.workspace.stale_after", at)),
        (None, Some(at)) => Some(("intercept.workspace.refresh", at)),
        (None, None) => None,
    };
    if let (true, Some((key, at))) = (stale_after <= refresh, written) {
        return Err(src.error(
            at.span(),
            key,
            format!(
                "expected stale_after ({}) to be longer than refresh ({}), or every read would be stale",
                humantime::format_duration(stale_after),
                humantime::format_duration(refresh)
            ),
        ));
    }
    let management_key = key_source(
        src,
        "intercept.workspace",
        ("management_key_env", raw.management_key_env.as_ref()),
        ("management_key_file", raw.management_key_file.as_ref()),
    )?
    .unwrap_or(defaults.management_key);
    Ok(WorkspaceSettings {
        id: optional(
            src,
            "intercept.workspace.id",
            raw.id.as_ref(),
            parse::workspace_id,
        )?,
        management_key,
        refresh,
        stale_after,
    })
}

/// `<x>_env` or `<x>_file`, not both: two sources for one secret would leave it unclear which
/// key is in use.
fn key_source(
    src: Source<'_>,
    table: &str,
    (env_key, env): (&str, Option<&Spanned<String>>),
    (file_key, file): (&str, Option<&Spanned<String>>),
) -> Result<Option<KeySource>, PolicyError> {
    match (env, file) {
        (Some(_), Some(file)) => Err(src.error(
            file.span(),
            format!("{table}.{file_key}"),
            format!("expected `{env_key}` or `{file_key}`, not both"),
        )),
        (Some(env), None) => checked(src, &format!("{table}.{env_key}"), env, parse::env_var_name)
            .map(|n| Some(KeySource::Env(n))),
        (None, Some(file)) => checked(
            src,
            &format!("{table}.{file_key}"),
            file,
            parse::absolute_path,
        )
        .map(|p: PathBuf| Some(KeySource::File(p))),
        (None, None) => Ok(None),
    }
}
