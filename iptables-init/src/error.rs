//! Every way `tollgate-init` can fail, and the exit code each one maps to.
//!
//! The codes are part of the interface (the README's table; an operator reads them from
//! `kubectl describe pod`): never renumber one, only add.

use crate::check::Check;
use crate::family::Family;

/// Success.
pub const EXIT_OK: u8 = 0;
/// Bad arguments or configuration (sysexits `EX_USAGE`), e.g. `--proxy-uid 0`.
pub const EXIT_USAGE: u8 = 64;
/// A required `iptables-*` binary is missing, or no backend is usable (`EX_UNAVAILABLE`).
pub const EXIT_MISSING_BINARY: u8 = 69;
/// Not root, or no CAP_NET_ADMIN (`EX_NOPERM`).
pub const EXIT_PRIVILEGES: u8 = 77;
/// Applying the IPv4 rules failed.
pub const EXIT_APPLY_V4: u8 = 10;
/// Applying the IPv6 rules failed while the kernel has IPv6.
pub const EXIT_APPLY_V6: u8 = 11;
/// Reading the current rules (`iptables-save`) failed.
pub const EXIT_READ_RULES: u8 = 12;
/// Removing tollgate's rules failed (`uninstall`).
pub const EXIT_UNINSTALL: u8 = 13;
/// This container holds the proxy's UID number as a group: the Pod gives it to every container.
pub const EXIT_PROXY_GROUP: u8 = 14;
/// Self-test failures: this base plus [`Check::offset`]; the base is 20 for IPv4, 30 for IPv6.
pub const EXIT_SELF_TEST_V4: u8 = 20;
/// See [`EXIT_SELF_TEST_V4`].
pub const EXIT_SELF_TEST_V6: u8 = 30;

/// A failure, carrying what the operator needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or configuration.
    #[error("{0}")]
    Usage(String),
    /// Not enough privilege to change the Pod's netfilter rules.
    #[error("{0}")]
    Privileges(String),
    /// A binary tollgate-init runs is not installed.
    #[error("{0}")]
    MissingBinary(String),
    /// `iptables-save` failed.
    #[error("reading the current {family} rules with {tool} failed: {detail}")]
    ReadRules {
        /// Which family.
        family: Family,
        /// The binary that failed.
        tool: String,
        /// Its stderr or the spawn error.
        detail: String,
    },
    /// `iptables-restore` refused or failed; nothing of that family was changed (it is atomic).
    #[error(
        "applying the {family} rules with {tool} failed (nothing was changed for {family}): {detail}"
    )]
    Apply {
        /// Which family.
        family: Family,
        /// The binary that failed.
        tool: String,
        /// Its stderr or the spawn error.
        detail: String,
    },
    /// Removing tollgate's chains failed.
    #[error("removing the {family} rules with {tool} failed: {detail}")]
    Uninstall {
        /// Which family.
        family: Family,
        /// The binary that failed.
        tool: String,
        /// Its stderr or the spawn error.
        detail: String,
    },
    /// The Pod gives every container the proxy's group (fsGroup or supplementalGroups).
    #[error("{0}")]
    ProxyGroup(String),
    /// A self-test check failed (or could not run).
    #[error("self-test failed ({family}, {check}): {detail}")]
    SelfTest {
        /// Which family.
        family: Family,
        /// Which check.
        check: Check,
        /// What was seen.
        detail: String,
    },
}

impl Error {
    /// The process exit code for this failure (documented in the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Privileges(_) => EXIT_PRIVILEGES,
            Error::MissingBinary(_) => EXIT_MISSING_BINARY,
            Error::ReadRules { .. } => EXIT_READ_RULES,
            Error::Apply {
                family: Family::V4, ..
            } => EXIT_APPLY_V4,
            Error::Apply {
                family: Family::V6, ..
            } => EXIT_APPLY_V6,
            Error::Uninstall { .. } => EXIT_UNINSTALL,
            Error::ProxyGroup(_) => EXIT_PROXY_GROUP,
            Error::SelfTest { family, check, .. } => {
                let base = match family {
                    Family::V4 => EXIT_SELF_TEST_V4,
                    Family::V6 => EXIT_SELF_TEST_V6,
                };
                base + check.offset()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn exit_codes_are_distinct() {
        let mut errors = vec![
            Error::Usage(String::new()),
            Error::Privileges(String::new()),
            Error::MissingBinary(String::new()),
            Error::ProxyGroup(String::new()),
        ];
        for family in [Family::V4, Family::V6] {
            let (tool, detail) = (String::new(), String::new());
            errors.push(Error::ReadRules {
                family,
                tool: tool.clone(),
                detail: detail.clone(),
            });
            errors.push(Error::Apply {
                family,
                tool: tool.clone(),
                detail: detail.clone(),
            });
            for check in Check::ALL {
                errors.push(Error::SelfTest {
                    family,
                    check,
                    detail: detail.clone(),
                });
            }
        }
        errors.push(Error::Uninstall {
            family: Family::V4,
            tool: String::new(),
            detail: String::new(),
        });
        let codes: Vec<u8> = errors.iter().map(Error::exit_code).collect();
        let unique: BTreeSet<u8> = codes.iter().copied().collect();
        // ReadRules is one code for both families (the message names the family).
        assert_eq!(unique.len(), codes.len() - 1, "{codes:?}");
        assert!(!unique.contains(&EXIT_OK));
        assert_eq!(
            Error::SelfTest {
                family: Family::V6,
                check: Check::Udp,
                detail: String::new()
            }
            .exit_code(),
            35
        );
    }
}
