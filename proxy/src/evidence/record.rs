//! One line of `proxy_decisions.jsonl`: `{"seq":..,"ts_ms":..,"kind":..,<fields>,"prev":..}`.
//! A line records the inputs of its decision (SNI, original destination, phase, the ECH flag),
//! not only the outcome, so `tollgate replay` can decide it again under another policy.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The decision log's file name inside the data dir.
pub const DECISIONS_FILE: &str = "proxy_decisions.jsonl";
/// The receipt's file name inside the data dir.
pub const RECEIPT_FILE: &str = "run_receipt.json";

/// One line: position, time, the record and the hash of the line before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// 0-based position in the file (restarts continue the count).
    pub seq: u64,
    /// Wall-clock time of writing, Unix milliseconds.
    pub ts_ms: u64,
    /// What was decided.
    #[serde(flatten)]
    pub record: Record,
    /// SHA-256 (hex) of the previous line's bytes; for the first line, the genesis hash.
    pub prev: String,
}

/// What a line records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Record {
    /// A process started writing (the first line of a file, and one per restart).
    Start(Start),
    /// A policy version came into force (at start and at each good reload).
    Policy(PolicyVersion),
    /// The phase changed.
    Phase(PhaseChange),
    /// One connection's decision (the decision log line's fields). Boxed: the common record
    /// is the largest.
    Connection(Box<Connection>),
    /// One LLM request's outcome.
    Llm(Llm),
    /// One DNS query observe mode decided twice (answered as verification; what the agent
    /// phase would have decided beside it).
    Dns(Dns),
}

/// One observed DNS query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// The query name as queried (trailing dot included; cut at 254 bytes, a name's limit).
    pub name: String,
    /// The query type (`A`, `AAAA`, ...).
    pub qtype: String,
    /// The outcome it was answered with (the verification-phase decision).
    pub answered: String,
    /// The outcome the agent-phase policy would have given.
    pub observed: String,
    /// The rule behind that agent-phase outcome, if any.
    pub rule: Option<String>,
}

/// A process start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    /// The evaluation run id (or a random one when none is configured).
    pub run_id: String,
    /// The commit the writing binary was built from.
    pub commit: String,
    /// The writing binary's version.
    pub version: String,
    /// The budget in force at start, micro-USD (`None`: no budget configured).
    pub budget_micros: Option<u64>,
    /// The proxy's own ports (a captured connection to one is refused whatever the policy).
    pub own_ports: Vec<u16>,
    /// Why the chain found on disk at start did not verify (it is continued from its last line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_chain: Option<String>,
    /// Bytes of a torn last line (a crash mid-write) cut off at start.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated_bytes: u64,
    /// Whether the agent phase runs in observe mode (routes as verification, records what the
    /// agent-phase policy would have decided).
    #[serde(default, skip_serializing_if = "is_false")]
    pub observe: bool,
}

/// A policy version in force from this line on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// SHA-256 (hex) of the policy file's bytes (of the embedded default when no file is given).
    pub sha256: String,
    /// Where it came from: the file path, or `embedded`.
    pub origin: String,
}

/// A phase transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseChange {
    /// The phase before (`None` at start).
    pub from: Option<String>,
    /// The phase after.
    pub to: String,
    /// Which source decided it (label, sentinel, policy).
    pub source: String,
}

/// One connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// `sni` or `capture`.
    pub listener: String,
    /// The agent-side address.
    pub peer: String,
    /// The pre-redirect destination, when known.
    pub orig_dst: Option<SocketAddr>,
    /// The normalised SNI, when a ClientHello was read.
    pub sni: Option<String>,
    /// The ECH/ESNI extension the hello carried, if any (route's ECH screen reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<String>,
    /// The phase the connection was decided in.
    pub phase: String,
    /// The route the pure decision gave; `None` when no decision was made (unreadable hello,
    /// connection limit). It can differ from `route` when a dial failed.
    pub decided: Option<String>,
    /// The final route.
    pub route: String,
    /// The final reason.
    pub reason: String,
    /// The policy pattern that decided it.
    pub rule: Option<String>,
    /// Bytes agent → host.
    pub bytes_up: u64,
    /// Bytes host → agent.
    pub bytes_down: u64,
    /// Accept to close.
    pub duration_ms: u64,
    /// How it ended.
    pub end: String,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Observe mode: what the agent-phase policy would have decided (route, reason, rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
}

/// The agent-phase decision observe mode records beside the one it applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Route the agent phase would have taken.
    pub route: String,
    /// Its reason.
    pub reason: String,
    /// Its rule.
    pub rule: Option<String>,
}

/// One LLM request through the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Llm {
    /// The model the request named (`None` when refused before the body was read).
    pub model: Option<String>,
    /// The model that served it, as the response or the generation record named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// The provider that served it, as the response or the generation record named it (older
    /// logs lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_provider: Option<String>,
    /// The HTTP status the agent got.
    pub status: u16,
    /// `forwarded`, or the refusal's reason.
    pub reason: String,
    /// Cost charged to the budget, micro-USD.
    pub charged_micros: u64,
    /// Of that, the excess over the reservation (an overcharge), micro-USD.
    pub overcharge_micros: u64,
    /// A served-model or provider violation, when the gateway detected one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// Parses one line (without its newline).
pub fn parse(line: &str) -> Result<Line, serde_json::Error> {
    serde_json::from_str(line)
}
