//! Rootless mode: a user namespace in which this process is root, so that it holds
//! CAP_NET_ADMIN over the network namespace it creates next, and over nothing else.
//!
//! `unshare(CLONE_NEWUSER)` refuses a multi-threaded process, so this runs first in
//! `tollgate run`, before the runtime or any other thread exists.

use nix::sched::{CloneFlags, unshare};

/// Why rootless mode is not available.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UsernsError {
    #[error(
        "not root, and the kernel refuses an unprivileged user namespace ({0}): run as root, or \
         allow them (sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; \
         on Ubuntu 24.04+ also kernel.apparmor_restrict_unprivileged_userns=0)"
    )]
    Refused(nix::Error),
    #[error("cannot write {file} in the new user namespace: {error}")]
    Map {
        file: &'static str,
        error: std::io::Error,
    },
}

/// Enters a new user namespace with our UID and GID mapped to 0 (setgroups denied, as an
/// unprivileged process must).
pub(crate) fn enter() -> Result<(), UsernsError> {
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    unshare(CloneFlags::CLONE_NEWUSER).map_err(UsernsError::Refused)?;
    for (file, text) in [
        ("/proc/self/setgroups", "deny".to_owned()),
        ("/proc/self/uid_map", format!("0 {uid} 1\n")),
        ("/proc/self/gid_map", format!("0 {gid} 1\n")),
    ] {
        std::fs::write(file, text).map_err(|error| UsernsError::Map { file, error })?;
    }
    Ok(())
}
