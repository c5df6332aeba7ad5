//! The command line: flags (each also settable from a `TOLLGATE_INIT_*` variable, handy in a Pod
//! spec) and subcommands. Only parsing lives here; [`crate::config`] turns [`Args`] into a
//! validated [`crate::config::Config`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

/// `tollgate-init`: capture a Pod's outbound TCP into tollgate, fence everything else.
#[derive(Debug, Parser)]
#[command(
    name = "tollgate-init",
    version,
    about = "Install, verify or remove tollgate's netfilter rules in this network namespace",
    long_about = "Runs as the Pod's first init container (root, CAP_NET_ADMIN + CAP_NET_RAW). \
                  Redirects every outbound TCP connection of every UID but the proxy's to tollgate \
                  (SNI ports to --sni-port, the rest to --capture-port), rejects other UDP and \
                  non-TCP traffic, in IPv4 and IPv6, atomically per family, then self-tests.\n\n\
                  Without a subcommand, `install` runs."
)]
pub struct Args {
    /// What to do (default: install).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// UID the proxy runs as: its traffic is neither redirected nor fenced. Must not be 0.
    /// (There is no GID exemption: a group is not something the agent can be kept out of.)
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_INIT_PROXY_UID",
        default_value_t = 1337
    )]
    pub proxy_uid: u32,

    /// TCP destination ports redirected to --sni-port (comma list or repeated).
    #[arg(long, global = true, env = "TOLLGATE_INIT_SNI_PORTS", value_delimiter = ',',
          default_value = "443", value_parser = port)]
    pub sni_ports: Vec<u16>,

    /// tollgate's SNI router port.
    #[arg(long, global = true, env = "TOLLGATE_INIT_SNI_PORT", default_value_t = 15443, value_parser = port)]
    pub sni_port: u16,

    /// tollgate's original-destination router port: every other outbound TCP lands here.
    #[arg(long, global = true, env = "TOLLGATE_INIT_CAPTURE_PORT", default_value_t = 15001,
          value_parser = port)]
    pub capture_port: u16,

    /// Destination ranges neither captured nor fenced, any protocol (CIDR or address).
    #[arg(long, global = true, env = "TOLLGATE_INIT_EXCLUDE_CIDR", value_delimiter = ',',
          value_parser = cidr)]
    pub exclude_cidr: Vec<IpNet>,

    /// TCP destination ports neither captured nor fenced (UDP stays fenced).
    #[arg(long, global = true, env = "TOLLGATE_INIT_EXCLUDE_PORT", value_delimiter = ',',
          value_parser = port)]
    pub exclude_port: Vec<u16>,

    /// Also exclude 10/8, 172.16/12, 192.168/16 and fc00::/7 (bypasses the proxy: see README).
    #[arg(long, global = true, env = "TOLLGATE_INIT_EXCLUDE_RFC1918")]
    pub exclude_rfc1918: bool,

    /// tollgate's DNS listener: every non-proxy UDP and TCP packet to port 53, to any address,
    /// is redirected here (the agent reaches no resolver but tollgate).
    #[arg(long, global = true, env = "TOLLGATE_INIT_DNS_PORT", default_value_t = 15053, value_parser = port)]
    pub dns_port: u16,

    /// iptables backend: auto = legacy if legacy rules already exist, else nft (as Istio does).
    #[arg(long, global = true, env = "TOLLGATE_INIT_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// IPv6 rules: auto = on when the kernel has IPv6. `off` is unsafe on dual-stack Pods.
    #[arg(long, global = true, env = "TOLLGATE_INIT_IPV6", value_enum, default_value_t = Switch3::Auto)]
    pub ipv6: Switch3,

    /// The filter fence (reject UDP and other non-TCP traffic).
    #[arg(long, global = true, env = "TOLLGATE_INIT_FENCE", value_enum, default_value_t = Switch::On)]
    pub fence: Switch,

    /// Run the self-test after install.
    #[arg(long, global = true, env = "TOLLGATE_INIT_SELF_TEST", value_enum, default_value_t = Switch::On)]
    pub self_test: Switch,

    /// Print the exact iptables-restore input and apply nothing (install, uninstall).
    #[arg(long, global = true, env = "TOLLGATE_INIT_DRY_RUN")]
    pub dry_run: bool,

    /// IPv4 address the self-test dials; nothing may serve it.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_INIT_PROBE_V4",
        default_value = "192.0.2.1"
    )]
    pub probe_v4: Ipv4Addr,

    /// IPv6 address the self-test dials; nothing may serve it.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_INIT_PROBE_V6",
        default_value = "2001:db8::1"
    )]
    pub probe_v6: Ipv6Addr,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install (or replace) tollgate's chains, then self-test (the default).
    Install,
    /// Remove tollgate's chains and jumps, and nothing else.
    Uninstall,
    /// Check the installed rules and probe them, without changing anything.
    Verify,
    /// Internal: one self-test connection, run as a child under another UID.
    #[command(name = "__probe", hide = true)]
    Probe(ProbeArgs),
}

/// Arguments of the internal probe child (see `verify::probe`).
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// `tcp` or `udp`.
    #[arg(long, value_enum)]
    pub proto: ProbeProto,
    /// Where to connect.
    #[arg(long)]
    pub connect: SocketAddr,
    /// Sent on a TCP connection so the parent can recognise it.
    #[arg(long, default_value = "")]
    pub token: String,
    /// TCP connect timeout.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// Protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeProto {
    /// A TCP connect, then the token.
    Tcp,
    /// One UDP datagram.
    Udp,
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// Legacy if legacy rules exist, else nft if usable, else legacy.
    Auto,
    /// iptables-legacy (x_tables).
    Legacy,
    /// iptables-nft (nf_tables through the iptables syntax).
    Nft,
}

/// An on/off flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// An on/off/auto flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch3 {
    /// Decided from the kernel.
    Auto,
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

fn port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{s}` is not a port (1 to 65535)")),
        Ok(p) => Ok(p),
    }
}

/// A CIDR or a single address (`/32`, `/128`); host bits are cleared like the policy does.
fn cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not a CIDR (10.0.0.0/8, fd00::/8) or an address"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_lists_and_defaults() {
        let a = Args::try_parse_from([
            "tollgate-init",
            "--sni-ports",
            "443,8443",
            "--exclude-cidr",
            "10.1.2.3/8",
            "--exclude-cidr",
            "fd00::1",
            "verify",
        ])
        .unwrap();
        assert_eq!(a.sni_ports, vec![443, 8443]);
        assert_eq!(
            a.exclude_cidr,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "fd00::1/128".parse().unwrap()
            ]
        );
        assert!(matches!(a.command, Some(Command::Verify)));
        assert_eq!(
            (a.proxy_uid, a.sni_port, a.capture_port),
            (1337, 15443, 15001)
        );
    }

    #[test]
    fn flags_after_the_subcommand_work() {
        let a = Args::try_parse_from([
            "tollgate-init",
            "uninstall",
            "--dry-run",
            "--backend",
            "legacy",
        ])
        .unwrap();
        assert!(a.dry_run);
        assert_eq!(a.backend, BackendChoice::Legacy);
    }

    #[test]
    fn rejects_port_zero_and_bad_cidrs() {
        assert!(Args::try_parse_from(["tollgate-init", "--sni-port", "0"]).is_err());
        assert!(Args::try_parse_from(["tollgate-init", "--exclude-cidr", "10.0.0.0/33"]).is_err());
        assert!(Args::try_parse_from(["tollgate-init", "--ipv6", "maybe"]).is_err());
    }
}
