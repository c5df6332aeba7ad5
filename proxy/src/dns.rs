//! The DNS stage: tollgate answers the Pod's DNS. tollgate-init redirects every agent packet to
//! port 53 (UDP and TCP, any destination) here; a query leaves the Pod only when the policy could
//! route its name in the current phase.
//!
//! ```text
//! listener (UDP, TCP) → limits → decide::parse → decide::decide(name, type, phase, policy)
//!     → { local answer (NXDOMAIN, empty, NOTIMP) | upstream::resolve → decide::relay } → record
//! ```
//!
//! - [`decide`]: pure: bytes → query → verdict, and the messages built from them (fuzzed).
//! - [`upstream`]: the exchange with the cluster resolver (UDP, TCP when truncated).
//! - [`listener`]: the UDP socket (answers from the address the query was sent to) and the TCP
//!   listener (bounded connections, idle timeout).
//!
//! Every query ends in [`Dns::record`]: one metric increment and, for a refused name, one log
//! line (rate-limited: a flood of refused names must not become a flood of log lines).

pub mod decide;
pub mod listener;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hickory_proto::op::ResponseCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tollgate_policy::{DnsSettings, Phase, Policy};

use crate::metrics::Metrics;
use crate::phase;
use decide::{Action, Outcome, Query, Rejected};

/// What the proxy's own resolv.conf says: where to forward by default, and the search domains
/// whose expansions of routable names are answered locally.
#[derive(Clone, Debug, Default)]
pub struct ResolvConf {
    /// `nameserver` lines, port 53.
    pub nameservers: Vec<SocketAddr>,
    /// `search` domains, normalised (lowercase, no trailing dot).
    pub search: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text; unknown lines and bad values are skipped.
    pub fn parse(text: &str) -> ResolvConf {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let ip = words.next().and_then(|a| a.split('%').next());
                    if let Some(ip) = ip.and_then(|a| a.parse::<IpAddr>().ok()) {
                        out.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                // The last `search` line wins, as in glibc.
                Some("search") => {
                    out.search = words
                        .filter_map(|d| tollgate_policy::normalize_host(d).ok())
                        .collect();
                }
                _ => {}
            }
        }
        out
    }

    /// Reads `path`; unreadable is an empty configuration (forwarding then needs `[dns] upstream`).
    pub fn load(path: &Path) -> ResolvConf {
        match std::fs::read_to_string(path) {
            Ok(text) => ResolvConf::parse(&text),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read resolv.conf: DNS forwarding needs [dns] upstream");
                ResolvConf::default()
            }
        }
    }
}

/// The transport a query came over: it bounds the answer's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: the client's EDNS size, else 512; longer answers are truncated (TC).
    Udp,
    /// TCP: 64 KiB.
    Tcp,
}

impl Transport {
    fn limit(self, query: Option<&Query>) -> usize {
        match (self, query) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(q)) => q.udp_limit(),
            (Transport::Udp, None) => 512,
        }
    }
}

/// The limits built from `[dns]`, rebuilt when a reload changes them.
struct Limits {
    key: (NonZeroU32, NonZeroU32, NonZeroU32, NonZeroU32),
    rate: DefaultDirectRateLimiter,
    in_flight: Arc<Semaphore>,
    tcp: Arc<Semaphore>,
}

impl Limits {
    fn new(dns: &DnsSettings) -> Limits {
        Limits {
            key: Self::key_of(dns),
            rate: RateLimiter::direct(
                Quota::per_second(dns.queries_per_second).allow_burst(dns.burst),
            ),
            in_flight: Arc::new(Semaphore::new(dns.max_in_flight.get() as usize)),
            tcp: Arc::new(Semaphore::new(dns.max_tcp_connections.get() as usize)),
        }
    }

    fn key_of(dns: &DnsSettings) -> (NonZeroU32, NonZeroU32, NonZeroU32, NonZeroU32) {
        (
            dns.queries_per_second,
            dns.burst,
            dns.max_in_flight,
            dns.max_tcp_connections,
        )
    }
}

/// Refused-name log lines per second (with a burst); the rest are counted as suppressed.
const LOG_PER_SECOND: u32 = 10;

/// The DNS stage's shared state.
pub struct Dns {
    policy: Arc<ArcSwap<Policy>>,
    phase: Arc<phase::State>,
    metrics: Metrics,
    resolv: ResolvConf,
    limits: ArcSwap<Limits>,
    log_rate: DefaultDirectRateLimiter,
    log_suppressed: AtomicU64,
    /// Observe mode: the agent phase answers as verification (see `connection::Context::observe`).
    pub observe: bool,
    /// Observe mode chains each observed query here (the recorder's size bound applies).
    pub evidence: Option<Arc<crate::evidence::Recorder>>,
}

/// A query that needs the upstream, with its in-flight permit.
pub struct Pending {
    query: Query,
    rule: Option<String>,
    phase: Phase,
    policy: Arc<Policy>,
    _permit: OwnedSemaphorePermit,
}

/// The first step's result: an answer now (or nothing), or a query to forward.
pub enum Step {
    /// Answer with these bytes; `None`: send nothing.
    Done(Option<Vec<u8>>),
    /// Needs the upstream: run [`Dns::forward`].
    Forward(Box<Pending>),
}

impl Dns {
    /// The stage, reading the policy and phase the connections read.
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        phase: Arc<phase::State>,
        metrics: Metrics,
        resolv: ResolvConf,
    ) -> Dns {
        let limits = Limits::new(&policy.load().dns);
        let burst = NonZeroU32::new(LOG_PER_SECOND * 2).unwrap_or(NonZeroU32::MIN);
        let per_second = NonZeroU32::new(LOG_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        Dns {
            policy,
            phase,
            metrics,
            resolv,
            limits: ArcSwap::from_pointee(limits),
            log_rate: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            log_suppressed: AtomicU64::new(0),
            observe: false,
            evidence: None,
        }
    }

    fn limits(&self, dns: &DnsSettings) -> Arc<Limits> {
        let current = self.limits.load_full();
        if current.key == Limits::key_of(dns) {
            return current;
        }
        let fresh = Arc::new(Limits::new(dns));
        self.limits.store(fresh.clone());
        fresh
    }

    /// A permit for one DNS-over-TCP connection, or `None` at the limit.
    pub fn tcp_permit(&self) -> Option<OwnedSemaphorePermit> {
        let policy = self.policy.load();
        self.limits(&policy.dns)
            .tcp
            .clone()
            .try_acquire_owned()
            .ok()
    }

    /// The idle timeout of DNS-over-TCP connections.
    pub fn tcp_idle_timeout(&self) -> std::time::Duration {
        self.policy.load().dns.tcp_idle_timeout
    }

    /// Chains an observed query: what it was answered with beside the agent-phase decision.
    fn chain_observed(&self, query: &Query, answered: &decide::Verdict, agent: &decide::Verdict) {
        let Some(evidence) = &self.evidence else {
            return;
        };
        let mut name = query.question.name().to_ascii();
        // A DNS name is at most 253 bytes (plus the root dot); longer input is not a name.
        name.truncate(name.floor_char_boundary(254));
        evidence.append(crate::evidence::record::Record::Dns(
            crate::evidence::record::Dns {
                name,
                qtype: decide::qtype_label(query.qtype()).to_owned(),
                answered: answered.outcome.as_str().to_owned(),
                observed: agent.outcome.as_str().to_owned(),
                rule: agent.rule.clone(),
            },
        ));
    }

    /// Everything that needs no upstream: limits, parsing, the decision, local answers.
    pub fn step(&self, bytes: &[u8], peer: SocketAddr, transport: Transport) -> Step {
        let policy = self.policy.load_full();
        let limits = self.limits(&policy.dns);
        if limits.rate.check().is_err() {
            self.record(Outcome::RateLimited, "-", None, peer, None);
            return Step::Done(None);
        }
        let query = match decide::parse(bytes) {
            Ok(query) => query,
            Err(Rejected::Drop(outcome)) => {
                self.record(outcome, "-", None, peer, None);
                return Step::Done(None);
            }
            Err(Rejected::Answer { outcome, response }) => {
                let qtype = response
                    .queries
                    .first()
                    .map_or("-", |q| decide::qtype_label(q.query_type()));
                self.record(outcome, qtype, None, peer, None);
                return Step::Done(decide::encode(&response, transport.limit(None)));
            }
        };
        let mut phase = self.phase.get();
        let mut observed = None;
        if self.observe && phase == Phase::Agent {
            // Answer as verification would; log what the agent phase would have answered.
            let agent = decide::decide(&query, phase, &policy, &self.resolv.search);
            tracing::info!(%peer, name = %truncated_name(query.question.name().to_ascii()), observed = agent.outcome.as_str(), rule = agent.rule.as_deref().unwrap_or("-"), "dns observed");
            phase = Phase::Verification;
            observed = Some(agent);
        }
        let verdict = decide::decide(&query, phase, &policy, &self.resolv.search);
        if let Some(agent) = &observed {
            self.chain_observed(&query, &verdict, agent);
        }
        let qtype = decide::qtype_label(query.qtype());
        match verdict.action {
            Action::Local(code) => {
                self.record(
                    verdict.outcome,
                    qtype,
                    verdict.rule.as_deref(),
                    peer,
                    Some(&query),
                );
                let msg = decide::local_answer(&query, code);
                Step::Done(decide::encode(&msg, transport.limit(Some(&query))))
            }
            Action::Forward => match limits.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Step::Forward(Box::new(Pending {
                    query,
                    rule: verdict.rule,
                    phase,
                    policy,
                    _permit: permit,
                })),
                Err(_) => {
                    self.record(
                        Outcome::InFlightLimit,
                        qtype,
                        verdict.rule.as_deref(),
                        peer,
                        Some(&query),
                    );
                    let msg = decide::local_answer(&query, ResponseCode::ServFail);
                    Step::Done(decide::encode(&msg, transport.limit(Some(&query))))
                }
            },
        }
    }

    /// Asks the upstream and relays its answer (SERVFAIL if none answered usably).
    pub async fn forward(
        &self,
        pending: Pending,
        peer: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let Pending {
            query,
            rule,
            phase,
            policy,
            ..
        } = pending;
        let dns = &policy.dns;
        let servers = if dns.upstream.is_empty() {
            &self.resolv.nameservers
        } else {
            &dns.upstream
        };
        let max_ttl = u32::try_from(dns.max_ttl.as_secs()).unwrap_or(u32::MAX);
        let started = std::time::Instant::now();
        let result = upstream::resolve(servers, &query, dns.upstream_timeout, phase, max_ttl).await;
        self.metrics
            .dns_upstream_latency
            .observe(started.elapsed().as_secs_f64());
        let qtype = decide::qtype_label(query.qtype());
        let msg = match result {
            Ok(msg) => {
                self.record(
                    Outcome::Forwarded,
                    qtype,
                    rule.as_deref(),
                    peer,
                    Some(&query),
                );
                msg
            }
            Err(error) => {
                tracing::warn!(%peer, name = %query.question.name(), qtype, %error, "dns upstream failed");
                self.record(
                    Outcome::UpstreamFailed,
                    qtype,
                    rule.as_deref(),
                    peer,
                    Some(&query),
                );
                decide::local_answer(&query, ResponseCode::ServFail)
            }
        };
        decide::encode(&msg, transport.limit(Some(&query)))
    }

    /// Both steps, for transports that answer in order (TCP).
    pub async fn answer(
        &self,
        bytes: &[u8],
        peer: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.step(bytes, peer, transport) {
            Step::Done(answer) => answer,
            Step::Forward(pending) => self.forward(*pending, peer, transport).await,
        }
    }

    /// Counts a query dropped before it could be read whole (an oversized TCP frame).
    pub fn dropped(&self, outcome: Outcome, peer: SocketAddr) {
        self.record(outcome, "-", None, peer, None);
    }

    /// The one exit of every query: the metric, and a log line for a refused name.
    fn record(
        &self,
        outcome: Outcome,
        qtype: &str,
        rule: Option<&str>,
        peer: SocketAddr,
        query: Option<&Query>,
    ) {
        self.metrics
            .dns_queries
            .with_label_values(&[outcome.as_str(), qtype])
            .inc();
        let name = query.map(|q| truncated_name(q.question.name().to_ascii()));
        let name = name.as_deref().unwrap_or("-");
        let rule = rule.unwrap_or("-");
        let phase = self.phase.get().as_str();
        if !outcome.is_refused_name() {
            tracing::debug!(%peer, name, qtype, result = outcome.as_str(), rule, phase, "dns");
            return;
        }
        if self.log_rate.check().is_err() {
            self.log_suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.log_suppressed.swap(0, Ordering::Relaxed);
        tracing::info!(%peer, name, qtype, result = outcome.as_str(), rule, phase, suppressed, "dns refused");
    }
}

/// Names in log lines are bounded too (a DNS name is at most 255 bytes, escaped up to 4 times).
fn truncated_name(mut name: String) -> String {
    const MAX: usize = 300;
    if name.len() > MAX {
        let mut cut = MAX;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        name.push('…');
    }
    name
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_gives_nameservers_and_the_last_search_line() {
        let text = "# kubelet\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver bogus\n\
                    search old.example\nsearch NS.svc.cluster.local. svc.cluster.local cluster.local\n\
                    options ndots:5\n";
        let r = ResolvConf::parse(text);
        assert_eq!(
            r.nameservers,
            vec![
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
            ]
        );
        assert_eq!(
            r.search,
            vec!["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        );
        assert!(
            ResolvConf::load(Path::new("/nonexistent/resolv.conf"))
                .nameservers
                .is_empty()
        );
    }
}
