//! [`Args`] → [`Config`]: every check that can fail before touching the kernel, so that a
//! `Config` always describes a rule set that makes sense (parse, don't validate).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::cli::{Args, BackendChoice, Switch, Switch3};
use crate::error::Error;
use crate::family::Family;

/// The RFC 1918 ranges, and their IPv6 counterpart (ULA), for `--exclude-rfc1918`.
pub const RFC1918: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Exempt UID (never 0); the only exemption by owner.
    pub proxy_uid: u32,
    /// Ports redirected to `sni_port`, deduplicated, in the given order.
    pub sni_ports: Vec<u16>,
    /// tollgate's SNI router port.
    pub sni_port: u16,
    /// tollgate's original-destination router port.
    pub capture_port: u16,
    /// Excluded IPv4 destinations.
    pub exclude_v4: Vec<Ipv4Net>,
    /// Excluded IPv6 destinations.
    pub exclude_v6: Vec<Ipv6Net>,
    /// Excluded TCP destination ports.
    pub exclude_ports: Vec<u16>,
    /// tollgate's DNS listener: UDP and TCP to port 53 (any address) is redirected here.
    pub dns_port: u16,
    /// Whether the filter fence is installed.
    pub fence: bool,
    /// Whether IPv6 rules are installed (`--ipv6 auto` already resolved).
    pub ipv6: bool,
    /// `--backend`.
    pub backend: BackendChoice,
    /// `--dry-run`.
    pub dry_run: bool,
    /// Self-test after install.
    pub self_test: bool,
    /// Address the IPv4 self-test dials.
    pub probe_v4: Ipv4Addr,
    /// Address the IPv6 self-test dials.
    pub probe_v6: Ipv6Addr,
    /// Warnings found while resolving defaults, printed by the caller.
    pub warnings: Vec<String>,
}

impl Config {
    /// Validates `args`. `kernel_has_ipv6` resolves `--ipv6 auto` (a parameter so tests need
    /// no host).
    pub fn from_args(args: &Args, kernel_has_ipv6: impl FnOnce() -> bool) -> Result<Config, Error> {
        let mut warnings = Vec::new();
        if args.proxy_uid == 0 {
            return Err(Error::Usage(
                "--proxy-uid 0: the proxy must not run as root. The exemption is by owner, so \
                 every process of that UID (the agent's root processes included) would bypass the \
                 capture; run tollgate as a dedicated non-root UID (default 1337)"
                    .into(),
            ));
        }
        if args.sni_port == args.capture_port {
            return Err(Error::Usage(format!(
                "--sni-port and --capture-port are both {}: they must be tollgate's two different listeners",
                args.sni_port
            )));
        }
        if args.dns_port == args.sni_port || args.dns_port == args.capture_port {
            return Err(Error::Usage(format!(
                "--dns-port {} is also the SNI or capture port: DNS needs its own listener",
                args.dns_port
            )));
        }
        let sni_ports = dedup(&args.sni_ports);
        if sni_ports.is_empty() {
            return Err(Error::Usage(
                "--sni-ports is empty: give at least one port (default 443)".into(),
            ));
        }
        let exclude_ports = dedup(&args.exclude_port);
        if let Some(p) = exclude_ports.iter().find(|p| sni_ports.contains(p)) {
            return Err(Error::Usage(format!(
                "--exclude-port {p} is also in --sni-ports: an excluded SNI port would bypass the proxy"
            )));
        }

        let mut nets: Vec<IpNet> = args.exclude_cidr.clone();
        if args.exclude_rfc1918 {
            nets.extend(RFC1918.iter().filter_map(|s| s.parse::<IpNet>().ok()));
        }
        let (mut exclude_v4, mut exclude_v6) = (Vec::new(), Vec::new());
        for net in nets {
            if net.prefix_len() == 0 {
                return Err(Error::Usage(format!(
                    "--exclude-cidr {net} would exclude every destination: nothing would be captured"
                )));
            }
            match net {
                IpNet::V4(n) if !exclude_v4.contains(&n) => exclude_v4.push(n),
                IpNet::V6(n) if !exclude_v6.contains(&n) => exclude_v6.push(n),
                _ => {}
            }
        }

        let ipv6 = match args.ipv6 {
            Switch3::On => true,
            Switch3::Off => {
                warnings.push(
                    "--ipv6 off: IPv6 traffic is neither captured nor fenced; unsafe on a dual-stack Pod".into(),
                );
                false
            }
            Switch3::Auto => kernel_has_ipv6(),
        };
        for (flag, ip) in [
            ("--probe-v4", IpAddr::V4(args.probe_v4)),
            ("--probe-v6", IpAddr::V6(args.probe_v6)),
        ] {
            if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
                return Err(Error::Usage(format!(
                    "{flag} {ip}: the self-test must dial an address that is captured (not loopback, \
                     unspecified or multicast) and that nothing serves"
                )));
            }
        }
        if exclude_v4.iter().any(|n| n.contains(&args.probe_v4)) {
            warnings.push(format!(
                "--probe-v4 {} is excluded: the IPv4 redirect probes will be skipped",
                args.probe_v4
            ));
        }
        if exclude_v6.iter().any(|n| n.contains(&args.probe_v6)) && ipv6 {
            warnings.push(format!(
                "--probe-v6 {} is excluded: the IPv6 redirect probes will be skipped",
                args.probe_v6
            ));
        }

        Ok(Config {
            proxy_uid: args.proxy_uid,
            sni_ports,
            sni_port: args.sni_port,
            capture_port: args.capture_port,
            exclude_v4,
            exclude_v6,
            exclude_ports,
            dns_port: args.dns_port,
            fence: args.fence == Switch::On,
            ipv6,
            backend: args.backend,
            dry_run: args.dry_run,
            self_test: args.self_test == Switch::On,
            probe_v4: args.probe_v4,
            probe_v6: args.probe_v6,
            warnings,
        })
    }

    /// The families rules are installed for: IPv4 always, IPv6 when enabled.
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// The excluded ranges of one family, rendered as CIDRs.
    pub fn excluded(&self, family: Family) -> Vec<String> {
        match family {
            Family::V4 => self.exclude_v4.iter().map(ToString::to_string).collect(),
            Family::V6 => self.exclude_v6.iter().map(ToString::to_string).collect(),
        }
    }

    /// The address the self-test dials in `family`.
    pub fn probe_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.probe_v4),
            Family::V6 => IpAddr::V6(self.probe_v6),
        }
    }

    /// Whether `ip` falls in an excluded range.
    pub fn is_excluded(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.exclude_v4.iter().any(|n| n.contains(&a)),
            IpAddr::V6(a) => self.exclude_v6.iter().any(|n| n.contains(&a)),
        }
    }
}

fn dedup(ports: &[u16]) -> Vec<u16> {
    let mut seen = BTreeSet::new();
    ports.iter().copied().filter(|p| seen.insert(*p)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    fn config(argv: &[&str]) -> Result<Config, Error> {
        let mut full = vec!["tollgate-init"];
        full.extend_from_slice(argv);
        let args = Args::try_parse_from(full).unwrap();
        Config::from_args(&args, || true)
    }

    #[test]
    fn proxy_uid_zero_is_refused() {
        let e = config(&["--proxy-uid", "0"]).unwrap_err();
        assert_eq!(e.exit_code(), 64);
        assert!(e.to_string().contains("must not run as root"), "{e}");
    }

    #[test]
    fn refuses_contradictions() {
        assert!(
            config(&["--sni-port", "15001"])
                .unwrap_err()
                .to_string()
                .contains("both 15001")
        );
        assert!(
            config(&["--exclude-port", "443"])
                .unwrap_err()
                .to_string()
                .contains("bypass")
        );
        assert!(
            config(&["--exclude-cidr", "0.0.0.0/0"])
                .unwrap_err()
                .to_string()
                .contains("every destination")
        );
        assert!(config(&["--exclude-cidr", "::/0"]).is_err());
        assert!(
            config(&["--probe-v4", "127.0.0.1"])
                .unwrap_err()
                .to_string()
                .contains("captured")
        );
        assert!(config(&["--probe-v6", "::"]).is_err());
    }

    #[test]
    fn defaults_resolve_ipv6_and_redirect_dns_to_15053() {
        let c = config(&[]).unwrap();
        assert_eq!(c.dns_port, 15053);
        assert!(c.ipv6 && c.fence && c.self_test);
        assert_eq!(c.families(), vec![Family::V4, Family::V6]);
        assert!(c.warnings.is_empty());
        assert!(
            config(&["--dns-port", "15443"])
                .unwrap_err()
                .to_string()
                .contains("own listener")
        );
        let off =
            Config::from_args(&Args::try_parse_from(["tollgate-init"]).unwrap(), || false).unwrap();
        assert!(!off.ipv6);
    }

    #[test]
    fn rfc1918_adds_ula_and_dedups() {
        let c = config(&["--exclude-rfc1918", "--exclude-cidr", "10.0.0.0/8"]).unwrap();
        assert_eq!(
            c.excluded(Family::V4),
            vec!["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        );
        assert_eq!(c.excluded(Family::V6), vec!["fc00::/7"]);
    }

    #[test]
    fn ipv6_off_warns() {
        let c = config(&["--ipv6", "off"]).unwrap();
        assert_eq!(c.families(), vec![Family::V4]);
        assert!(c.warnings.iter().any(|w| w.contains("dual-stack")));
    }
}
