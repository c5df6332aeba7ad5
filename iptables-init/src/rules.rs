//! The rule set, as data: [`plan`] turns a [`Config`] into the chains tollgate owns in one
//! family. Pure, so the golden tests pin it down exactly.
//!
//! Rules are written in the canonical form `iptables-save` prints (`-d` before `-p`, `-m tcp`
//! spelled out, `/32` masks), so what is installed can be compared line by line with what the
//! kernel reports (`verify`'s rule check).
//!
//! ```text
//! nat    OUTPUT ──(1st rule)──► TOLLGATE_OUTPUT   proxy uid → RETURN; UDP and TCP port 53, any
//!                                   │             address → REDIRECT --dns-port; loopback,
//!                                   │             --exclude-cidr, --exclude-port → RETURN
//!                                   └─ tcp ─────► TOLLGATE_REDIRECT  --sni-ports → REDIRECT --sni-port
//!                                                                    other TCP → REDIRECT --capture-port
//! filter OUTPUT ──(1st rule)──► TOLLGATE_FENCE    proxy uid, loopback (redirected TCP and DNS land
//!                                                 there), established, excluded, ICMPv6 ND/MLD → RETURN;
//!                                                 UDP, TCP, anything else → REJECT
//! ```
//!
//! The proxy is exempt by UID alone. There is no GID exemption: a GID is not an identity the
//! Pod spec can keep from the agent (an image's `USER 1000:1337`, `fsGroup`, a setgid file), while
//! the proxy's sockets all carry its UID, so a GID rule would only ever exempt someone else.
//!
//! Allowed traffic RETURNs to OUTPUT rather than ACCEPTing, so tollgate only ever removes
//! reachability: rules other tools put after the jump still apply.

use crate::config::Config;
use crate::family::Family;

/// The prefix of every chain tollgate owns; anything else is never touched.
pub const CHAIN_PREFIX: &str = "TOLLGATE_";
/// nat: the exemptions, jumped to from OUTPUT.
pub const NAT_CHAIN: &str = "TOLLGATE_OUTPUT";
/// nat: where captured TCP goes (SNI port or capture port).
pub const REDIRECT_CHAIN: &str = "TOLLGATE_REDIRECT";
/// filter: the fence, jumped to from OUTPUT.
pub const FENCE_CHAIN: &str = "TOLLGATE_FENCE";
/// The tables tollgate writes to.
pub const TABLES: [&str; 2] = ["nat", "filter"];
/// The built-in chain the jumps are inserted into (first position).
pub const HOOK_CHAIN: &str = "OUTPUT";

/// One of tollgate's chains and its rules, each a rule spec without the `-A <chain>` prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The chain name (starts with [`CHAIN_PREFIX`]).
    pub name: &'static str,
    /// Rule specs in order.
    pub rules: Vec<String>,
}

/// tollgate's part of one table: its chains and the single jump from OUTPUT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// `nat` or `filter`.
    pub name: &'static str,
    /// The spec of the jump rule inserted first in OUTPUT.
    pub jump: String,
    /// The chains, the jump's target first.
    pub chains: Vec<Chain>,
}

/// Everything tollgate installs in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPlan {
    /// The family.
    pub family: Family,
    /// nat always; filter when the fence is on.
    pub tables: Vec<Table>,
}

impl FamilyPlan {
    /// tollgate's part of `table`, if it has one.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// The rules for `family` under `cfg`.
pub fn plan(cfg: &Config, family: Family) -> FamilyPlan {
    let mut tables = vec![nat(cfg, family)];
    if cfg.fence {
        tables.push(fence(cfg, family));
    }
    FamilyPlan { family, tables }
}

fn nat(cfg: &Config, family: Family) -> Table {
    let mut out = exemptions(cfg, family);
    // DNS before the loopback and exclusion exemptions: a query to any address, a resolver on an
    // excluded range included, is answered by tollgate, which forwards only names the policy
    // could route. The proxy's own queries returned above.
    let dns = format!("REDIRECT --to-ports {}", cfg.dns_port);
    let loopback = out.pop();
    out.push(Rule::new("dns", dns.clone()).udp(53));
    out.push(Rule::new("dns", dns).tcp(53));
    out.extend(loopback);
    out.extend(exclusions(cfg, family));
    out.push(Rule::new("redirect", REDIRECT_CHAIN).proto("tcp"));

    let mut redirect: Vec<Rule> = cfg
        .sni_ports
        .iter()
        .map(|p| Rule::new("sni", format!("REDIRECT --to-ports {}", cfg.sni_port)).tcp(*p))
        .collect();
    redirect.push(
        Rule::new(
            "capture",
            format!("REDIRECT --to-ports {}", cfg.capture_port),
        )
        .proto("tcp"),
    );

    Table {
        name: "nat",
        jump: Rule::new("nat-jump", NAT_CHAIN).render(),
        chains: vec![chain(NAT_CHAIN, out), chain(REDIRECT_CHAIN, redirect)],
    }
}

fn fence(cfg: &Config, family: Family) -> Table {
    let mut rules = exemptions(cfg, family);
    rules.push(Rule::new("established", "RETURN").m("-m conntrack --ctstate RELATED,ESTABLISHED"));
    rules.extend(exclusions(cfg, family));
    let (port_unreachable, prohibited) = match family {
        Family::V4 => ("icmp-port-unreachable", "icmp-admin-prohibited"),
        Family::V6 => {
            // Sent by the kernel, not by a socket the agent controls (that needs CAP_NET_RAW):
            // neighbour discovery (RS, NS, NA) and the MLD reports for solicited-node groups.
            for t in [133, 135, 136] {
                rules.push(Rule::new("icmpv6-nd", "RETURN").icmpv6(t));
            }
            for t in [131, 132, 143] {
                rules.push(Rule::new("icmpv6-mld", "RETURN").icmpv6(t));
            }
            ("icmp6-port-unreachable", "icmp6-adm-prohibited")
        }
    };
    rules.push(
        Rule::new(
            "reject-udp",
            format!("REJECT --reject-with {port_unreachable}"),
        )
        .proto("udp"),
    );
    // TCP that was captured now goes to loopback (exempt above); anything else escaped the nat
    // table somehow (a flow older than the rules), and is reset.
    rules.push(Rule::new("reject-tcp", "REJECT --reject-with tcp-reset").proto("tcp"));
    rules.push(Rule::new(
        "reject-other",
        format!("REJECT --reject-with {prohibited}"),
    ));
    Table {
        name: "filter",
        jump: Rule::new("fence-jump", FENCE_CHAIN).render(),
        chains: vec![chain(FENCE_CHAIN, rules)],
    }
}

/// The proxy's own traffic (by UID only, see the module doc) and loopback destinations: first
/// in both tables.
fn exemptions(cfg: &Config, family: Family) -> Vec<Rule> {
    vec![
        Rule::new("proxy-uid", "RETURN").m(format!("-m owner --uid-owner {}", cfg.proxy_uid)),
        Rule::new("loopback", "RETURN").dst(family.loopback()),
    ]
}

fn exclusions(cfg: &Config, family: Family) -> Vec<Rule> {
    let mut rules: Vec<Rule> = cfg
        .excluded(family)
        .into_iter()
        .map(|net| Rule::new("exclude-cidr", "RETURN").dst(net))
        .collect();
    rules.extend(
        cfg.exclude_ports
            .iter()
            .map(|p| Rule::new("exclude-port", "RETURN").tcp(*p)),
    );
    rules
}

fn chain(name: &'static str, rules: Vec<Rule>) -> Chain {
    Chain {
        name,
        rules: rules.iter().map(Rule::render).collect(),
    }
}

/// A rule under construction, rendered in `iptables-save` order.
struct Rule {
    dst: Option<String>,
    proto: Option<&'static str>,
    matches: Vec<String>,
    comment: &'static str,
    target: String,
}

impl Rule {
    fn new(comment: &'static str, target: impl Into<String>) -> Rule {
        Rule {
            dst: None,
            proto: None,
            matches: Vec::new(),
            comment,
            target: target.into(),
        }
    }
    fn dst(mut self, d: impl Into<String>) -> Rule {
        self.dst = Some(d.into());
        self
    }
    fn proto(mut self, p: &'static str) -> Rule {
        self.proto = Some(p);
        self
    }
    fn m(mut self, m: impl Into<String>) -> Rule {
        self.matches.push(m.into());
        self
    }
    fn tcp(self, port: u16) -> Rule {
        self.proto("tcp").m(format!("-m tcp --dport {port}"))
    }
    fn udp(self, port: u16) -> Rule {
        self.proto("udp").m(format!("-m udp --dport {port}"))
    }
    fn icmpv6(self, t: u8) -> Rule {
        self.proto("ipv6-icmp")
            .m(format!("-m icmp6 --icmpv6-type {t}"))
    }
    fn render(&self) -> String {
        let mut words = Vec::new();
        if let Some(d) = &self.dst {
            words.push(format!("-d {d}"));
        }
        if let Some(p) = self.proto {
            words.push(format!("-p {p}"));
        }
        words.extend(self.matches.iter().cloned());
        words.push(format!(
            "-m comment --comment \"tollgate/{}\"",
            self.comment
        ));
        words.push(format!("-j {}", self.target));
        words.join(" ")
    }
}
