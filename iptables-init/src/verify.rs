//! The self-test: does the kernel do what the rules say? Run after `install` and by `verify`.
//!
//! Per family, in child processes ([`probe`]) and against token listeners ([`listen`]) on the
//! SNI and capture ports:
//!
//! 1. `sni-redirect`: TCP to `<probe>:<first SNI port>` as a non-proxy UID reaches the SNI port
//!    listener, and its SO_ORIGINAL_DST is the dialled address (`original-destination`);
//! 2. `capture-redirect`: TCP to `<probe>:80` reaches the capture port (same check);
//! 3. `proxy-exemption`: the same connection as the proxy UID reaches no listener;
//! 4. `udp-fence`: UDP to `<probe>:443` as a non-proxy UID fails with EPERM (fence on);
//! 5. `dns-redirect`: TCP and UDP to `<probe>:53` as a non-proxy UID reach the DNS port;
//! 6. `installed-rules`: `iptables-save` shows exactly the configured chains, one jump each,
//!    first in OUTPUT.
//!
//! Every check is printed; the exit code is the first failure's ([`judge`] decides each).
//!
//! A port already served (the proxy is running) is probed live: a redirected probe must be
//! accepted there, the proxy-UID probe must not be; the original destination is then not
//! checked. A probe whose `connect` fails at once with "no route" never reached netfilter: it
//! is reported as skipped (nothing leaves the Pod that way either), not as a pass.

pub mod judge;
pub mod listen;
pub mod probe;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::cli::ProbeProto;
use crate::config::Config;
use crate::error::Error;
use crate::family::Family;
use crate::host::Privileges;
use crate::restore::{Live, drift};
use crate::rules::plan;
pub use judge::{Check, Verdict};
use judge::{judge_dns_udp, judge_exempt, judge_redirect, judge_udp};
use listen::{Arrival, Listeners, Port};
use probe::{TcpOutcome, UdpOutcome, Who};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Ports tried, in order, for the capture probe (the first that is neither SNI nor excluded).
const CAPTURE_PROBE_PORTS: [u16; 4] = [80, 8080, 9, 1];

/// Runs every check for every configured family, prints them, and returns the first failure.
pub fn self_test(
    cfg: &Config,
    privileges: &Privileges,
    lives: &[(Family, Live)],
) -> Result<(), Error> {
    let families = cfg.families();
    let listeners = Listeners::bind(cfg.sni_port, cfg.capture_port, cfg.dns_port, &families)
        .map_err(|(family, detail)| Error::SelfTest {
            family,
            check: Check::Setup,
            detail,
        })?;
    let (agent, proxy) = identities(cfg, privileges);
    let mut prober = Prober {
        cfg,
        listeners,
        agent,
        proxy,
    };
    let mut first: Option<Error> = None;
    for family in families {
        let mut checks = match agent {
            None if privileges.euid == cfg.proxy_uid => vec![(
                "probes".to_string(),
                Verdict::Fail(
                    Check::Setup,
                    "running as the proxy UID without CAP_SETUID: cannot probe as another UID"
                        .into(),
                ),
            )],
            _ => prober.family(family),
        };
        let live = lives.iter().find(|(f, _)| *f == family).map(|(_, l)| l);
        checks.push(("installed rules".into(), rules_check(cfg, family, live)));
        if let Some(e) = report(family, checks) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Prints the checks of one family; returns the first failure as an error.
fn report(family: Family, checks: Vec<(String, Verdict)>) -> Option<Error> {
    let skipped = checks
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Skip(_)))
        .count();
    let mut first = None;
    for (what, verdict) in checks {
        match verdict {
            Verdict::Pass(d) => say!("self-test {family}: ok   {what}: {d}"),
            Verdict::Skip(d) => say!("self-test {family}: skip {what}: {d}"),
            Verdict::Fail(check, detail) => {
                say!("self-test {family}: FAIL {what}: {detail}");
                first.get_or_insert(Error::SelfTest {
                    family,
                    check,
                    detail: format!("{what}: {detail}"),
                });
            }
        }
    }
    if skipped > 0 {
        // A skip is not a pass: say so where an operator looks first.
        eprintln!(
            "tollgate-init: warning: {family}: {skipped} self-test check(s) skipped (see above); a probe \
             address without a route can be replaced with --probe-v4/--probe-v6 (an unused address the Pod routes)"
        );
    }
    first
}

fn rules_check(cfg: &Config, family: Family, live: Option<&Live>) -> Verdict {
    let Some(live) = live else {
        return Verdict::Skip("the current rules were not read".into());
    };
    let problems = drift(&plan(cfg, family), live);
    if problems.is_empty() {
        Verdict::Pass("exactly the configured chains; one jump per table, first in OUTPUT".into())
    } else {
        Verdict::Fail(Check::Rules, problems.join("; "))
    }
}

/// Who the probes run as: a non-proxy UID and the proxy's, when the process may switch;
/// otherwise `(None, None)`: the non-proxy probes run as ourselves (root is captured like any
/// other UID) and the proxy-UID probe is skipped.
///
/// The GIDs are crossed on purpose: the redirected probes run with the proxy's UID number as
/// their GID (the proxy's group in a tollgate Pod), the proxy probe with another GID, so the
/// test proves that the UID alone is exempt and that a process in the proxy's group is not.
fn identities(cfg: &Config, privileges: &Privileges) -> (Option<Who>, Option<Who>) {
    if !privileges.can_switch_uid() {
        return (None, None);
    }
    let other = |id: u32| if id == 65534 { 65533 } else { 65534 };
    (
        Some(Who {
            uid: other(cfg.proxy_uid),
            gid: cfg.proxy_uid,
        }),
        Some(Who {
            uid: cfg.proxy_uid,
            gid: other(cfg.proxy_uid),
        }),
    )
}

fn who_text(who: Option<Who>) -> String {
    match who {
        Some(w) => format!("as uid {} gid {}", w.uid, w.gid),
        None => format!(
            "as uid {} (no CAP_SETUID/CAP_SETGID to switch)",
            nix::unistd::geteuid()
        ),
    }
}

/// The listeners and identities one self-test run probes with.
struct Prober<'a> {
    cfg: &'a Config,
    listeners: Listeners,
    agent: Option<Who>,
    proxy: Option<Who>,
}

impl Prober<'_> {
    /// The four probes of one family, labelled.
    fn family(&mut self, family: Family) -> Vec<(String, Verdict)> {
        let cfg = self.cfg;
        let ip = cfg.probe_addr(family);
        if cfg.is_excluded(ip) {
            let why = format!(
                "{ip} is in an --exclude-cidr range: excluded traffic is not captured by design"
            );
            return vec![("probes".into(), Verdict::Skip(why))];
        }
        let agent = who_text(self.agent);
        let sni = SocketAddr::new(ip, cfg.sni_ports[0]);
        let mut out = vec![(
            format!("tcp {sni} {agent}"),
            self.redirect(family, Port::Sni, sni),
        )];

        let capture_port = CAPTURE_PROBE_PORTS
            .into_iter()
            .find(|p| !cfg.sni_ports.contains(p) && !cfg.exclude_ports.contains(p));
        out.push(match capture_port {
            Some(p) => {
                let dst = SocketAddr::new(ip, p);
                (
                    format!("tcp {dst} {agent}"),
                    self.redirect(family, Port::Capture, dst),
                )
            }
            None => (
                "capture probe".into(),
                Verdict::Skip("ports 80, 8080, 9 and 1 are all excluded or SNI ports".into()),
            ),
        });

        let dns = SocketAddr::new(ip, 53);
        out.push((
            format!("tcp {dns} {agent}"),
            self.redirect(family, Port::Dns, dns),
        ));
        out.push((format!("udp {dns} {agent}"), self.dns_udp(family, dns)));

        out.push((
            format!("tcp {sni} as the proxy (uid {})", cfg.proxy_uid),
            self.exempt(family, sni),
        ));
        if cfg.fence {
            let dst = SocketAddr::new(ip, 443);
            out.push((format!("udp {dst} {agent}"), self.udp(dst)));
        }
        out
    }

    /// A non-proxy connection that must land on `port`.
    fn redirect(&mut self, family: Family, port: Port, dst: SocketAddr) -> Verdict {
        let number = match port {
            Port::Sni => self.cfg.sni_port,
            Port::Capture => self.cfg.capture_port,
            Port::Dns => self.cfg.dns_port,
        };
        match self.tcp(dst, self.agent) {
            Err(e) => Verdict::Fail(Check::Setup, e),
            Ok((outcome, arrival)) => judge_redirect(
                port,
                number,
                dst,
                &outcome,
                arrival.as_ref(),
                self.listeners.busy(port, family),
            ),
        }
    }

    /// The proxy's connection, which must land nowhere.
    fn exempt(&mut self, family: Family, dst: SocketAddr) -> Verdict {
        let Some(proxy) = self.proxy else {
            return Verdict::Skip(
                "no CAP_SETUID/CAP_SETGID to probe as the proxy UID; its exemption rules are checked \
                 by `installed rules` below (add SETUID, SETGID to the init container to probe it)"
                    .into(),
            );
        };
        match self.tcp(dst, Some(proxy)) {
            Err(e) => Verdict::Fail(Check::Setup, e),
            Ok((outcome, arrival)) => judge_exempt(
                dst,
                &outcome,
                arrival.as_ref(),
                self.listeners.busy(Port::Sni, family).is_some(),
            ),
        }
    }

    fn udp(&mut self, dst: SocketAddr) -> Verdict {
        match self.run(ProbeProto::Udp, dst, "", self.agent) {
            Err(e) => Verdict::Fail(Check::Setup, e),
            Ok(line) => match UdpOutcome::decode(&line) {
                Some(o) => judge_udp(dst, &o),
                None => Verdict::Fail(Check::Setup, format!("probe child printed `{line}`")),
            },
        }
    }

    /// A non-proxy datagram to port 53, which must land on the DNS port.
    fn dns_udp(&mut self, family: Family, dst: SocketAddr) -> Verdict {
        let token = next_token(dst.ip());
        match self.run(ProbeProto::Udp, dst, &token, self.agent) {
            Err(e) => Verdict::Fail(Check::Setup, e),
            Ok(line) => match UdpOutcome::decode(&line) {
                Some(o) => judge_dns_udp(
                    dst,
                    self.cfg.dns_port,
                    &o,
                    self.listeners.take(&token).as_ref(),
                    self.listeners.udp_busy(family),
                ),
                None => Verdict::Fail(Check::Setup, format!("probe child printed `{line}`")),
            },
        }
    }

    fn tcp(
        &mut self,
        dst: SocketAddr,
        who: Option<Who>,
    ) -> Result<(TcpOutcome, Option<Arrival>), String> {
        let token = next_token(dst.ip());
        let line = self.run(ProbeProto::Tcp, dst, &token, who)?;
        let outcome =
            TcpOutcome::decode(&line).ok_or_else(|| format!("probe child printed `{line}`"))?;
        Ok((outcome, self.listeners.take(&token)))
    }

    /// Runs one child to completion while accepting on the listeners (so nothing waits on a
    /// full backlog), then sweeps once more: a connection the child completed is queued by then.
    fn run(
        &mut self,
        proto: ProbeProto,
        dst: SocketAddr,
        token: &str,
        who: Option<Who>,
    ) -> Result<String, String> {
        let mut child = probe::spawn(proto, dst, token, CONNECT_TIMEOUT, who)
            .map_err(|e| format!("cannot start the probe child: {e}"))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(5);
        loop {
            self.listeners.sweep();
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("the probe child did not finish in time".into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("waiting for the probe child: {e}")),
            }
        }
        self.listeners.sweep();
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().next() {
            Some(line) if out.status.success() => Ok(line.to_string()),
            _ => Err(format!(
                "the probe child failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

/// A token no other connection carries: pid, a counter, the clock.
fn next_token(ip: IpAddr) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let family = if ip.is_ipv4() { 4 } else { 6 };
    format!(
        "tollgate-init-probe-v{family}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests;
