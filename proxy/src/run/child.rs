//! `tollgate run-exec` (hidden): the last step before CMD, in CMD's own process.
//!
//! The sandbox thread starts this binary again instead of CMD, already in the sandbox namespace,
//! in a new process group and (root mode) as the unprivileged UID. It sets the parent-death
//! signal, checks the parent did not die before that, drops into a nested user namespace in
//! rootless mode, then `exec`s CMD. A re-exec rather than a `pre_exec` hook: everything here is
//! safe code in an ordinary process, and the proxy keeps `#![forbid(unsafe_code)]`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;

use clap::Args;
use nix::sys::signal::Signal;

/// The hidden subcommand's name.
pub const EXEC_SUBCOMMAND: &str = "run-exec";

/// The UID (and GID) CMD sees inside the nested user namespace in rootless mode.
const NESTED_ID: u32 = 65534;

/// Arguments of `tollgate run-exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The pid of `tollgate run`: if it is already gone, CMD must not start.
    #[arg(long)]
    parent: i32,
    /// Rootless mode: enter a nested user namespace first, so CMD keeps no capability over the
    /// sandbox's network namespace.
    #[arg(long)]
    nested_userns: bool,
    /// CMD and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
    command: Vec<OsString>,
}

/// Runs the step; returns only when CMD cannot be started (126: not executable, 127: not
/// found, as shells do; 125: the step itself failed).
pub fn main(args: ExecArgs) -> ExitCode {
    if args.nested_userns
        && let Err(e) = nested_userns()
    {
        eprintln!("tollgate run: cannot drop capabilities (nested user namespace): {e}");
        return ExitCode::from(super::EXIT_SANDBOX);
    }
    // After any credential change (which would clear it): SIGKILL when the sandbox thread that
    // started us ends (tollgate run exited or was killed).
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("tollgate run: cannot set the parent-death signal: {e}");
        return ExitCode::from(super::EXIT_SANDBOX);
    }
    if nix::unistd::getppid().as_raw() != args.parent {
        // The parent died before the signal was armed: nobody would kill us later.
        return ExitCode::from(super::EXIT_SANDBOX);
    }
    let Some((program, rest)) = args.command.split_first() else {
        return ExitCode::from(super::EXIT_SANDBOX);
    };
    let error = std::process::Command::new(program).args(rest).exec();
    eprintln!(
        "tollgate run: cannot run {}: {error}",
        program.to_string_lossy()
    );
    ExitCode::from(if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// A user namespace of our own, CMD mapped to a non-zero UID in it: at `exec` a non-root UID
/// loses every capability, and capabilities in a child user namespace never reach the sandbox's
/// network namespace, which the parent user namespace owns.
fn nested_userns() -> std::io::Result<()> {
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("{NESTED_ID} {uid} 1\n"))?;
    std::fs::write("/proc/self/gid_map", format!("{NESTED_ID} {gid} 1\n"))?;
    // Become that UID inside: after exec a non-zero UID keeps no capability.
    nix::unistd::setresgid(
        nix::unistd::Gid::from_raw(NESTED_ID),
        nix::unistd::Gid::from_raw(NESTED_ID),
        nix::unistd::Gid::from_raw(NESTED_ID),
    )?;
    nix::unistd::setresuid(
        nix::unistd::Uid::from_raw(NESTED_ID),
        nix::unistd::Uid::from_raw(NESTED_ID),
        nix::unistd::Uid::from_raw(NESTED_ID),
    )?;
    Ok(())
}
