//! The subcommands, each one pass through the stages: `install`, `uninstall`, `verify`.

use crate::backend::{self, Backend, Tools};
use crate::cli::BackendChoice;
use crate::config::Config;
use crate::error::Error;
use crate::family::Family;
use crate::host::{self, Privileges};
use crate::restore::{Live, render_install, render_uninstall};
use crate::rules::plan;
use crate::verify;

/// `install`: choose the backend, apply each family in one transaction, self-test.
pub fn install(cfg: &Config) -> Result<(), Error> {
    if cfg.dry_run {
        return dry_run_install(cfg);
    }
    let privileges = Privileges::current();
    privileges.require_net_admin()?;
    // Before any rule: a Pod that fails this must not start at all.
    host::refuse_proxy_group(cfg.proxy_uid, &host::groups())?;
    let (backend, why) = backend::choose(cfg.backend, cfg.ipv6)?;
    if backend == Backend::Legacy && !privileges.has_net_raw() {
        eprintln!(
            "tollgate-init: warning: the legacy backend needs CAP_NET_RAW, which this process lacks"
        );
    }
    // Every binary first, so a missing ip6tables does not leave IPv4 half-done.
    let tools = cfg
        .families()
        .into_iter()
        .map(|f| Tools::find(backend, f))
        .collect::<Result<Vec<_>, _>>()?;
    say!("tollgate-init: backend {backend} ({why})");
    for t in &tools {
        let live = t.save()?;
        let wanted = plan(cfg, t.family);
        t.restore(&render_install(&wanted, Some(&live)))
            .map_err(|detail| Error::Apply {
                family: t.family,
                tool: t.restore.display().to_string(),
                detail,
            })?;
        let rules: usize = wanted
            .tables
            .iter()
            .flat_map(|tb| &tb.chains)
            .map(|c| c.rules.len())
            .sum();
        say!(
            "tollgate-init: {} rules installed: {rules} rules in {} chains + {} jumps ({})",
            t.family,
            wanted
                .tables
                .iter()
                .map(|tb| tb.chains.len())
                .sum::<usize>(),
            wanted.tables.len(),
            t.restore_command()
        );
    }
    if !cfg.self_test {
        say!("tollgate-init: self-test skipped (--self-test off)");
        return Ok(());
    }
    verify::self_test(cfg, &privileges, &read_all(&tools)?)?;
    say!("tollgate-init: installed and self-tested");
    Ok(())
}

/// `verify`: read the rules, compare, probe. Changes nothing.
pub fn verify(cfg: &Config) -> Result<(), Error> {
    if cfg.dry_run {
        return Err(Error::Usage(
            "--dry-run applies to install and uninstall; verify never changes anything".into(),
        ));
    }
    let privileges = Privileges::current();
    privileges.require_net_admin()?;
    let (backend, why) = backend::choose(cfg.backend, cfg.ipv6)?;
    let tools = cfg
        .families()
        .into_iter()
        .map(|f| Tools::find(backend, f))
        .collect::<Result<Vec<_>, _>>()?;
    say!("tollgate-init: verifying the {backend} rules ({why})");
    verify::self_test(cfg, &privileges, &read_all(&tools)?)?;
    say!("tollgate-init: verified");
    Ok(())
}

/// `uninstall`: remove every tollgate chain and jump, from both backends unless one is forced.
pub fn uninstall(cfg: &Config) -> Result<(), Error> {
    Privileges::current().require_net_admin()?;
    let backends = match cfg.backend {
        BackendChoice::Legacy => vec![Backend::Legacy],
        BackendChoice::Nft => vec![Backend::Nft],
        BackendChoice::Auto => vec![Backend::Legacy, Backend::Nft],
    };
    let (mut usable, mut removed) = (0, 0);
    for backend in backends {
        for family in cfg.families() {
            let tools = match Tools::find(backend, family) {
                Ok(t) => t,
                Err(e) if cfg.backend != BackendChoice::Auto => return Err(e),
                Err(_) => continue,
            };
            let live = match tools.save() {
                Ok(l) => l,
                Err(e) if cfg.backend != BackendChoice::Auto => return Err(e),
                // auto: a backend this kernel does not support cannot hold tollgate rules.
                Err(_) => continue,
            };
            usable += 1;
            let Some(script) = render_uninstall(&live) else {
                continue;
            };
            removed += 1;
            if cfg.dry_run {
                say!("# {family} ({backend}): {}", tools.restore_command());
                say!("{}", script.trim_end());
                continue;
            }
            tools.restore(&script).map_err(|detail| Error::Uninstall {
                family,
                tool: tools.restore.display().to_string(),
                detail,
            })?;
            say!("tollgate-init: removed the {family} rules ({backend})");
        }
    }
    if usable == 0 {
        return Err(Error::MissingBinary(
            "no usable iptables-save/-restore found for uninstall".into(),
        ));
    }
    if removed == 0 {
        say!("tollgate-init: nothing to remove: no TOLLGATE_* chains found");
    }
    Ok(())
}

/// `install --dry-run`: the exact restore input per family. The current rules are read when
/// the process may (so re-install deletions show up); otherwise shown as for a fresh namespace.
fn dry_run_install(cfg: &Config) -> Result<(), Error> {
    let privileged = Privileges::current().require_net_admin().is_ok();
    let backend = match cfg.backend {
        BackendChoice::Legacy => Some((Backend::Legacy, "--backend legacy".to_string())),
        BackendChoice::Nft => Some((Backend::Nft, "--backend nft".to_string())),
        BackendChoice::Auto if privileged => backend::choose(cfg.backend, cfg.ipv6).ok(),
        BackendChoice::Auto => None,
    };
    say!("# tollgate-init install --dry-run: nothing is applied");
    match &backend {
        Some((b, why)) => say!("# backend: {b} ({why})"),
        None => say!(
            "# backend: not detected (needs CAP_NET_ADMIN); auto picks legacy if legacy rules exist, else nft"
        ),
    }
    for family in cfg.families() {
        let tools = backend
            .as_ref()
            .and_then(|(b, _)| Tools::find(*b, family).ok());
        let live = tools
            .as_ref()
            .filter(|_| privileged)
            .and_then(|t| t.save().ok());
        match &tools {
            Some(t) => say!("# {family}: {}", t.restore_command()),
            None => say!("# {family}: {}-restore --noflush", family.tool_prefix()),
        }
        if live.is_none() {
            say!("# {family}: current rules not read: shown as for a fresh namespace");
        }
        say!(
            "{}",
            render_install(&plan(cfg, family), live.as_ref()).trim_end()
        );
    }
    Ok(())
}

fn read_all(tools: &[Tools]) -> Result<Vec<(Family, Live)>, Error> {
    tools.iter().map(|t| Ok((t.family, t.save()?))).collect()
}
