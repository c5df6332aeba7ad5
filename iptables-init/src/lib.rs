//! tollgate-init: the Pod's first init container. It makes every outbound TCP connection of
//! every UID but the proxy's land in tollgate, rejects the rest (UDP, QUIC included), in IPv4
//! and IPv6, and proves it with a self-test.
//!
//! Layout (a run passes through these stages, top to bottom):
//!
//! ```text
//! cli → config → rules::plan → restore::render_install → backend (iptables-restore --noflush) → verify
//!                                    ^ backend (iptables-save): the live rules it replaces
//! ```
//!
//! - [`cli`]: the flags and subcommands (`install`, `uninstall`, `verify`).
//! - [`config`]: validated settings; resolvers from resolv.conf, `--ipv6 auto` resolved.
//! - [`rules`]: the pure rule set per family (golden-tested).
//! - [`restore`]: the idempotent `iptables-restore` input against the live rules; the drift check.
//! - [`backend`]: legacy vs nft (detected as Istio does), running `-save` and `-restore`.
//! - [`verify`]: the self-test: probe children as other UIDs against token listeners.
//! - [`host`]: capabilities, IPv6 presence, listener owners, from `/proc`.
//! - [`commands`]: the subcommands wiring the stages; [`error`]: failures and exit codes.
//! - Leaf modules the stages share (they import no other module): [`family`] (IPv4 or IPv6) and
//!   [`check`] (the self-test's checks and exit-code offsets).

#![forbid(unsafe_code)]

/// `println!`, except that a closed stdout (`tollgate-init --dry-run | head`) is not a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod backend;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod family;
pub mod host;
pub mod restore;
pub mod rules;
pub mod verify;
