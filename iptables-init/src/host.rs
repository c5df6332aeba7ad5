//! Facts about the process and the network namespace, read from `/proc`.

use std::path::Path;

use crate::error::Error;
use crate::family::Family;

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// What the process may do, from `/proc/self/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privileges {
    /// Effective UID.
    pub euid: u32,
    /// The `CapEff` bit set.
    pub effective: u64,
}

impl Privileges {
    /// Reads the current process's.
    pub fn current() -> Privileges {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Privileges {
            euid: nix::unistd::geteuid().as_raw(),
            effective: parse_cap_eff(&status).unwrap_or(0),
        }
    }

    fn has(&self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }

    /// Whether the self-test can run its probes as other UIDs (CAP_SETUID and CAP_SETGID).
    pub fn can_switch_uid(&self) -> bool {
        self.has(CAP_SETUID) && self.has(CAP_SETGID)
    }

    /// Fails unless the process can change netfilter rules (CAP_NET_ADMIN).
    pub fn require_net_admin(&self) -> Result<(), Error> {
        if self.has(CAP_NET_ADMIN) {
            return Ok(());
        }
        let who = if self.euid == 0 {
            "running as root but without CAP_NET_ADMIN".to_string()
        } else {
            format!("not root (euid {}) and without CAP_NET_ADMIN", self.euid)
        };
        Err(Error::Privileges(format!(
            "{who}: tollgate-init changes this network namespace's netfilter rules; run it as root with \
             securityContext.capabilities.add: [NET_ADMIN, NET_RAW] (CapEff={:016x})",
            self.effective
        )))
    }

    /// Whether CAP_NET_RAW is there too (the legacy backend needs it).
    pub fn has_net_raw(&self) -> bool {
        self.has(CAP_NET_RAW)
    }
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// Every group this process holds: its GIDs (real, effective, saved, filesystem) and its
/// supplementary groups, from `/proc/self/status`.
pub fn groups() -> Vec<u32> {
    parse_groups(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

fn parse_groups(status: &str) -> Vec<u32> {
    let mut out: Vec<u32> = status
        .lines()
        .filter_map(|l| l.strip_prefix("Gid:").or_else(|| l.strip_prefix("Groups:")))
        .flat_map(str::split_whitespace)
        .filter_map(|g| g.parse().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Refuses to go on when this process holds the proxy's UID number as a group. In a Pod that
/// can only come from the Pod-wide `fsGroup` or `supplementalGroups` (tollgate-init sets its own
/// `runAsGroup`), which the kubelet gives to every container, the agent's included. The rules
/// exempt no group, but a Pod built that way was not made by `tollgate-launch` and was not
/// checked by it: the one thing about the other containers this container can see.
pub fn refuse_proxy_group(proxy_uid: u32, groups: &[u32]) -> Result<(), Error> {
    if groups.contains(&proxy_uid) {
        return Err(Error::ProxyGroup(format!(
            "this container holds group {proxy_uid}, the proxy's: the Pod's fsGroup or \
             supplementalGroups give it to every container, the agent's included. Remove {proxy_uid} \
             from the Pod's securityContext (`tollgate-launch check-pod` lists what else to fix)"
        )));
    }
    Ok(())
}

/// Whether the kernel has IPv6 in this namespace (not booted with `ipv6.disable=1`).
pub fn kernel_has_ipv6() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// The UID owning the TCP listener on `port` (any address) in this namespace, from
/// `/proc/net/tcp{,6}`, if there is one.
pub fn listener_owner(family: Family, port: u16) -> Option<u32> {
    let file = match family {
        Family::V4 => "/proc/net/tcp",
        Family::V6 => "/proc/net/tcp6",
    };
    parse_listener_owner(&std::fs::read_to_string(file).ok()?, port)
}

fn parse_listener_owner(table: &str, port: u16) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...; st 0A = LISTEN
        let local_port = f.get(1)?.rsplit(':').next()?;
        (u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == "0A").then_some(())?;
        f.get(7)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_capabilities() {
        let status = "Name:\tx\nCapPrm:\t0000000000003000\nCapEff:\t0000000000003000\n";
        let p = Privileges {
            euid: 0,
            effective: parse_cap_eff(status).unwrap(),
        };
        assert!(p.require_net_admin().is_ok());
        assert!(p.has_net_raw());
        assert!(!p.can_switch_uid());
        let all = Privileges {
            euid: 0,
            effective: 0x1ff_ffff_ffff,
        };
        assert!(all.can_switch_uid());
        let none = Privileges {
            euid: 65534,
            effective: 0,
        };
        let e = none.require_net_admin().unwrap_err();
        assert_eq!(e.exit_code(), 77);
        assert!(e.to_string().contains("not root (euid 65534)"), "{e}");
    }

    #[test]
    fn reads_groups_and_refuses_the_proxy_one() {
        let status = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t1337 5 \n";
        let groups = parse_groups(status);
        assert_eq!(groups, vec![0, 5, 1337]);
        let e = refuse_proxy_group(1337, &groups).unwrap_err();
        assert_eq!(e.exit_code(), 14);
        assert!(e.to_string().contains("fsGroup"), "{e}");
        assert!(refuse_proxy_group(2000, &groups).is_ok());
        assert_eq!(parse_groups("Gid:\t7\t7\t7\t7\nGroups:\t\n"), vec![7]);
    }

    #[test]
    fn finds_listener_owner() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3C8B 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 1 1 0 100 0 0 10 0
   1: 0100007F:3A99 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";
        assert_eq!(parse_listener_owner(table, 15499), Some(1337));
        // An established connection on the port is not a listener.
        assert_eq!(parse_listener_owner(table, 15001), None);
        assert_eq!(parse_listener_owner(table, 443), None);
    }
}
