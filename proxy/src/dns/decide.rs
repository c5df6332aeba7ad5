//! The pure part of the DNS stage: bytes → [`Query`] → [`Verdict`], and the messages built from
//! them (the question sent upstream, the answers relayed or made up locally). No I/O and no
//! clock, so the fuzz target and the unit tests drive exactly what the listener runs.
//!
//! A name is decided with the same normalisation and host patterns as SNI routing
//! (`normalize_host`, `HostList::find`), so a name resolves exactly when a connection to it could
//! be routed somewhere other than reject.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tollgate_policy::{Phase, Policy, normalize_host};

/// The largest query accepted (a query carries one name of at most 255 bytes, plus an OPT
/// record): anything longer is not a resolver library's query.
pub const MAX_QUERY: usize = 512;
/// The UDP payload tollgate advertises upstream and to clients (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The classic UDP limit for clients without EDNS.
const CLASSIC_UDP: usize = 512;

/// What became of one query: a bounded metric label and log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded and the upstream's answer relayed.
    Forwarded,
    /// Agent phase, a name no policy list routes: NXDOMAIN, nothing forwarded.
    NotAllowListed,
    /// A name on `tunnel.deny`: NXDOMAIN, nothing forwarded.
    Denied,
    /// A search-path expansion of a routable name (`openrouter.ai.<ns>.svc.cluster.local`):
    /// NXDOMAIN at once, so the resolver library moves on to the name itself.
    SearchExpansion,
    /// `[dns] enabled = false`: NXDOMAIN.
    Disabled,
    /// Not a host name (`normalize_host` refused it): NXDOMAIN.
    InvalidName,
    /// HTTPS / SVCB: an empty answer, so clients do not learn ECH configurations.
    EmptyType,
    /// Agent phase, a record type other than A, AAAA, CNAME, HTTPS, SVCB: NOTIMP.
    TypeNotAllowed,
    /// Not a standard query (opcode): NOTIMP.
    NotQuery,
    /// Not exactly one question: FORMERR.
    QuestionCount,
    /// A class other than IN: REFUSED.
    NotInternet,
    /// Undecodable bytes, or a response sent to us: dropped, no answer.
    Malformed,
    /// Longer than [`MAX_QUERY`]: dropped.
    TooLarge,
    /// Over `[dns] queries_per_second`: dropped.
    RateLimited,
    /// Too many upstream queries in flight: SERVFAIL.
    InFlightLimit,
    /// No upstream answered usably: SERVFAIL.
    UpstreamFailed,
}

impl Outcome {
    /// Every outcome, for zeroing the metric series up front.
    pub const ALL: [Outcome; 16] = [
        Outcome::Forwarded,
        Outcome::NotAllowListed,
        Outcome::Denied,
        Outcome::SearchExpansion,
        Outcome::Disabled,
        Outcome::InvalidName,
        Outcome::EmptyType,
        Outcome::TypeNotAllowed,
        Outcome::NotQuery,
        Outcome::QuestionCount,
        Outcome::NotInternet,
        Outcome::Malformed,
        Outcome::TooLarge,
        Outcome::RateLimited,
        Outcome::InFlightLimit,
        Outcome::UpstreamFailed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::NotAllowListed => "not-allow-listed",
            Outcome::Denied => "denied",
            Outcome::SearchExpansion => "search-expansion",
            Outcome::Disabled => "disabled",
            Outcome::InvalidName => "invalid-name",
            Outcome::EmptyType => "empty-type",
            Outcome::TypeNotAllowed => "type-not-allowed",
            Outcome::NotQuery => "not-query",
            Outcome::QuestionCount => "question-count",
            Outcome::NotInternet => "not-class-in",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too-large",
            Outcome::RateLimited => "rate-limited",
            Outcome::InFlightLimit => "in-flight-limit",
            Outcome::UpstreamFailed => "upstream-failed",
        }
    }

    /// Whether the name was refused by policy (these get a log line each, rate-limited).
    pub fn is_refused_name(self) -> bool {
        matches!(
            self,
            Outcome::NotAllowListed
                | Outcome::Denied
                | Outcome::Disabled
                | Outcome::InvalidName
                | Outcome::TypeNotAllowed
        )
    }
}

/// Record types named in the metric label; every other type is `other`.
pub const QTYPES: [&str; 15] = [
    "A", "AAAA", "CNAME", "HTTPS", "SVCB", "TXT", "NULL", "ANY", "MX", "SRV", "PTR", "NS", "SOA",
    "CAA", "other",
];

/// The bounded metric label of a record type.
pub fn qtype_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::CNAME => "CNAME",
        RecordType::HTTPS => "HTTPS",
        RecordType::SVCB => "SVCB",
        RecordType::TXT => "TXT",
        RecordType::NULL => "NULL",
        RecordType::ANY => "ANY",
        RecordType::MX => "MX",
        RecordType::SRV => "SRV",
        RecordType::PTR => "PTR",
        RecordType::NS => "NS",
        RecordType::SOA => "SOA",
        RecordType::CAA => "CAA",
        _ => "other",
    }
}

/// A standard query with one IN question, as the agent sent it.
#[derive(Clone, Debug)]
pub struct Query {
    /// The agent's message id, echoed in the answer.
    pub id: u16,
    /// The question exactly as asked (case kept: the answer must echo it).
    pub question: Question,
    /// The client asked for recursion.
    pub recursion_desired: bool,
    /// The client's EDNS UDP payload size, if it sent an OPT record.
    pub edns_payload: Option<u16>,
}

impl Query {
    /// The record type asked for.
    pub fn qtype(&self) -> RecordType {
        self.question.query_type()
    }

    /// The largest answer the client takes over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns_payload {
            Some(p) => usize::from(p.clamp(CLASSIC_UDP as u16, EDNS_PAYLOAD)),
            None => CLASSIC_UDP,
        }
    }
}

/// Why bytes are not a [`Query`]: either dropped (no answer at all) or answered with an error
/// code built from the header that did decode.
#[derive(Clone, Debug)]
pub enum Rejected {
    /// Dropped: nothing is sent back.
    Drop(Outcome),
    /// Answered with this code; the message id (and question, if one) come from the query.
    Answer {
        /// Why.
        outcome: Outcome,
        /// The error response.
        response: Box<Message>,
    },
}

/// Decodes one query. Never panics on any input (the fuzz target checks).
pub fn parse(bytes: &[u8]) -> Result<Query, Rejected> {
    if bytes.len() > MAX_QUERY {
        return Err(Rejected::Drop(Outcome::TooLarge));
    }
    let msg = Message::from_vec(bytes).map_err(|_| Rejected::Drop(Outcome::Malformed))?;
    let meta = &msg.metadata;
    if meta.message_type != MessageType::Query {
        // A response sent to the listener: answering could start a loop between two resolvers.
        return Err(Rejected::Drop(Outcome::Malformed));
    }
    let error = |outcome, code| {
        let mut response = Message::error_msg(meta.id, meta.op_code, code);
        response.metadata.recursion_desired = meta.recursion_desired;
        if msg.queries.len() == 1 {
            response.queries.clone_from(&msg.queries);
        }
        Rejected::Answer {
            outcome,
            response: Box::new(response),
        }
    };
    if meta.op_code != OpCode::Query {
        return Err(error(Outcome::NotQuery, ResponseCode::NotImp));
    }
    let [question] = msg.queries.as_slice() else {
        return Err(error(Outcome::QuestionCount, ResponseCode::FormErr));
    };
    if question.query_class() != DNSClass::IN {
        return Err(error(Outcome::NotInternet, ResponseCode::Refused));
    }
    Ok(Query {
        id: meta.id,
        question: question.clone(),
        recursion_desired: meta.recursion_desired,
        edns_payload: msg.edns.as_ref().map(Edns::max_payload),
    })
}

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The action.
    pub action: Action,
    /// Why (metric label, log field).
    pub outcome: Outcome,
    /// The policy pattern that matched the name, as written; `None` when none did.
    pub rule: Option<String>,
}

/// The answer a verdict leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask the upstream and relay its answer.
    Forward,
    /// Answer locally with this code and no records.
    Local(ResponseCode),
}

/// Decides a query: a pure function of (name, type, phase, policy, search domains).
///
/// Order: disabled, not a host name, search-path expansion of a routable name; then the name as
/// SNI routing would decide it (intercepted, denied, allow-listed by `tunnel.allow` or
/// `dns.allow` in the agent phase, anything not denied in verification); then the type.
pub fn decide(query: &Query, phase: Phase, policy: &Policy, search: &[String]) -> Verdict {
    let local = |outcome, code, rule: Option<String>| Verdict {
        action: Action::Local(code),
        outcome,
        rule,
    };
    if !policy.dns.enabled {
        return local(Outcome::Disabled, ResponseCode::NXDomain, None);
    }
    let Ok(name) = normalize_host(&query.question.name().to_ascii()) else {
        return local(Outcome::InvalidName, ResponseCode::NXDomain, None);
    };
    if let Some(rule) = search_expansion(&name, policy, search) {
        return local(Outcome::SearchExpansion, ResponseCode::NXDomain, Some(rule));
    }
    let rule = match name_rule(&name, phase, policy) {
        Ok(rule) => rule,
        Err((outcome, rule)) => return local(outcome, ResponseCode::NXDomain, rule),
    };
    match query.qtype() {
        RecordType::A | RecordType::AAAA | RecordType::CNAME => Verdict {
            action: Action::Forward,
            outcome: Outcome::Forwarded,
            rule,
        },
        RecordType::HTTPS | RecordType::SVCB => {
            local(Outcome::EmptyType, ResponseCode::NoError, rule)
        }
        _ if phase == Phase::Verification => Verdict {
            action: Action::Forward,
            outcome: Outcome::Forwarded,
            rule,
        },
        // TXT, NULL, ANY, MX, ...: the types DNS tunnels use; an allowed name needs none of them.
        _ => local(Outcome::TypeNotAllowed, ResponseCode::NotImp, rule),
    }
}

/// The rule that lets `name` resolve in `phase`, or why it may not (and the rule that said so).
fn name_rule(
    name: &str,
    phase: Phase,
    policy: &Policy,
) -> Result<Option<String>, (Outcome, Option<String>)> {
    if let Some(rule) = policy.intercept.find(name) {
        return Ok(Some(rule.to_string()));
    }
    if let Some(rule) = policy.deny.find(name) {
        return Err((Outcome::Denied, Some(rule.to_string())));
    }
    let allowed = policy
        .allow
        .find(name)
        .or_else(|| policy.dns.allow.find(name))
        .map(ToString::to_string);
    match (phase, allowed) {
        (_, Some(rule)) => Ok(Some(rule)),
        (Phase::Verification, None) => Ok(None),
        (Phase::Agent, None) => Err((Outcome::NotAllowListed, None)),
    }
}

/// `name` is `<routable>.<search domain>`: the pattern that routes `<routable>` (intercept,
/// `tunnel.allow` or `dns.allow`). Only routable prefixes count, so a real name under a search
/// domain (`svc.ns.svc.cluster.local`) is never mistaken for an expansion.
fn search_expansion(name: &str, policy: &Policy, search: &[String]) -> Option<String> {
    search.iter().find_map(|domain| {
        let prefix = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
        [&policy.intercept, &policy.allow, &policy.dns.allow]
            .into_iter()
            .find_map(|list| list.find(prefix))
            .map(ToString::to_string)
    })
}

/// The question tollgate sends upstream: only the decided question, recursion desired, a fresh
/// id and a plain OPT record. Nothing else the agent put in its message (flags, EDNS options,
/// extra records) leaves the Pod.
pub fn upstream_query(query: &Query, id: u16) -> Message {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(query.question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    msg.set_edns(edns);
    msg
}

/// Why an upstream answer is not relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    /// Not a DNS message.
    #[error("undecodable answer")]
    Undecodable,
    /// Not the answer to our question (id, type or question differ).
    #[error("answer to another question")]
    Mismatch,
    /// Truncated over UDP: retry over TCP.
    #[error("truncated")]
    Truncated,
}

/// Turns the upstream's answer into the agent's: the agent's id and question, the upstream's
/// code (NOERROR, NXDOMAIN, else SERVFAIL), the answer records (A, AAAA and CNAME only in the
/// agent phase), an SOA for negative caching, every TTL capped at `max_ttl` seconds.
pub fn relay(
    query: &Query,
    sent_id: u16,
    answer: &[u8],
    phase: Phase,
    max_ttl: u32,
) -> Result<Message, BadAnswer> {
    let upstream = Message::from_vec(answer).map_err(|_| BadAnswer::Undecodable)?;
    let meta = &upstream.metadata;
    let same_question = matches!(upstream.queries.as_slice(),
        [q] if q.query_type() == query.qtype()
            && q.query_class() == query.question.query_class()
            && q.name().eq_ignore_root(query.question.name()));
    if meta.id != sent_id || meta.message_type != MessageType::Response || !same_question {
        return Err(BadAnswer::Mismatch);
    }
    if meta.truncation {
        return Err(BadAnswer::Truncated);
    }
    let code = match meta.response_code {
        ResponseCode::NoError => ResponseCode::NoError,
        ResponseCode::NXDomain => ResponseCode::NXDomain,
        _ => ResponseCode::ServFail,
    };
    let mut out = local_answer(query, code);
    let cap = |mut r: Record| {
        r.ttl = r.ttl.min(max_ttl);
        r
    };
    let relayed = |r: &Record| {
        r.dns_class == DNSClass::IN
            && match phase {
                Phase::Agent => matches!(r.data, RData::A(_) | RData::AAAA(_) | RData::CNAME(_)),
                Phase::Verification => {
                    !matches!(r.record_type(), RecordType::HTTPS | RecordType::SVCB)
                }
            }
    };
    out.answers = upstream
        .answers
        .iter()
        .filter(|r| relayed(r))
        .cloned()
        .map(cap)
        .collect();
    out.authorities = upstream
        .authorities
        .iter()
        .filter(|r| r.dns_class == DNSClass::IN && matches!(r.data, RData::SOA(_)))
        .cloned()
        .map(cap)
        .collect();
    out.metadata.recursion_available = true;
    Ok(out)
}

/// An answer made here: the agent's id and question, `code`, no records.
pub fn local_answer(query: &Query, code: ResponseCode) -> Message {
    let mut msg = Message::error_msg(query.id, OpCode::Query, code);
    msg.metadata.recursion_desired = query.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.add_query(query.question.clone());
    if query.edns_payload.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(edns);
    }
    msg
}

/// Encodes `msg` for a transport taking at most `limit` bytes: over the limit, the header and
/// question only, with TC set (the client retries over TCP). `None` if it cannot be encoded.
pub fn encode(msg: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = msg.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut truncated = msg.truncate();
    truncated.metadata.id = msg.metadata.id;
    truncated.metadata.message_type = MessageType::Response;
    truncated.to_vec().ok().filter(|b| b.len() <= limit)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
