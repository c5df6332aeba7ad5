//! `tollgate replay`: decides recorded connections again under a candidate policy, with the
//! proxy's own pure functions ([`route::decide_hello`], [`route::decide_capture`]), and reports
//! what changes, grouped by host pattern and reason. Forwarded LLM requests are checked again
//! against the candidate's model rules (`[intercept.models]`, the gateway's own check), and what
//! served them against its served-model and provider rules (forced `order` without fallbacks).

use std::collections::BTreeMap;

use serde::Serialize;
use tollgate_policy::{Phase, Policy};

use super::record::{self, Connection, Llm, Record};
use crate::client_hello::{ClientHello, Encrypted};
use crate::enforce::{ServedKind, check_served};
use crate::route::{self, Decision, Route};

/// How many example targets a group lists.
const EXAMPLES: usize = 5;

/// A group of connections whose decision changed the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The policy pattern that decided them (the old one for newly refused, the new one for newly
    /// allowed), or the host/destination itself when no pattern did.
    pub pattern: String,
    /// The candidate policy's reason.
    pub reason: String,
    /// How many connections.
    pub count: u64,
    /// A few of their hosts or destinations.
    pub examples: Vec<String>,
}

/// What a replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Connections decided again.
    pub replayed: u64,
    /// Connections skipped: no decision was recorded (unreadable hello, connection limit).
    pub skipped: u64,
    /// Forwarded LLM requests whose model was checked again.
    pub replayed_llm: u64,
    /// LLM requests refused before their model was known (not checked again).
    pub skipped_llm: u64,
    /// Allowed then (tunnel or intercept), refused now.
    pub newly_refused: Vec<Group>,
    /// Refused then, allowed now.
    pub newly_allowed: Vec<Group>,
    /// Allowed both times but on another route (tunnel ↔ intercept).
    pub rerouted: Vec<Group>,
}

/// Why a decisions file cannot be replayed.
#[derive(Debug, thiserror::Error)]
#[error("{file} line {line}: {error}")]
pub struct ReplayError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The cause.
    pub error: String,
}

/// Each record of one decisions file's text, in order; a line that does not parse names itself.
pub fn records<'a>(
    file: &'a str,
    text: &'a str,
) -> impl Iterator<Item = Result<Record, ReplayError>> + 'a {
    text.lines().enumerate().map(move |(i, raw)| {
        record::parse(raw)
            .map(|line| line.record)
            .map_err(|e| ReplayError {
                file: file.to_owned(),
                line: i + 1,
                error: e.to_string(),
            })
    })
}

type Groups = BTreeMap<(String, String), Group>;

/// Accumulates a replay over one or more decision files.
#[derive(Debug, Default)]
pub struct Replay {
    report: Report,
    refused: Groups,
    allowed: Groups,
    rerouted: Groups,
}

impl Replay {
    /// Replays every connection of one file's text under `policy`.
    pub fn file(&mut self, file: &str, text: &str, policy: &Policy) -> Result<(), ReplayError> {
        let mut own_ports = Vec::new();
        for record in records(file, text) {
            match record? {
                Record::Start(start) => own_ports = start.own_ports,
                Record::Connection(c) => self.connection(&c, policy, &own_ports),
                Record::Llm(r) => self.llm(&r, policy),
                _ => {}
            }
        }
        Ok(())
    }

    fn connection(&mut self, c: &Connection, policy: &Policy, own_ports: &[u16]) {
        let (Some(decided), Some(phase)) = (
            c.decided.as_deref().and_then(parse_route),
            Phase::from_label(&c.phase),
        ) else {
            self.report.skipped += 1;
            return;
        };
        let Some(new) = decide(c, phase, policy, own_ports) else {
            self.report.skipped += 1;
            return;
        };
        self.report.replayed += 1;
        let target = c
            .sni
            .clone()
            .or_else(|| c.orig_dst.map(|a| a.to_string()))
            .unwrap_or_else(|| "-".to_owned());
        let (was, now) = (decided != Route::Reject, new.route != Route::Reject);
        let (groups, pattern) = match (was, now) {
            (true, false) => (&mut self.refused, c.rule.clone()),
            (false, true) => (&mut self.allowed, new.rule.clone()),
            (true, true) if decided != new.route => (&mut self.rerouted, new.rule.clone()),
            _ => return,
        };
        let pattern = pattern.unwrap_or_else(|| target.clone());
        let group = groups
            .entry((pattern.clone(), new.reason.as_str().to_owned()))
            .or_insert_with(|| Group {
                pattern,
                reason: new.reason.as_str().to_owned(),
                ..Group::default()
            });
        group.count += 1;
        if group.examples.len() < EXAMPLES && !group.examples.contains(&target) {
            group.examples.push(target);
        }
    }

    /// A forwarded request whose model the candidate's model rules refuse is newly refused,
    /// grouped under `model:<name>` and the rule's reason; so is one whose served model or
    /// provider the candidate would flag (the gateway's own [`check_served`]; unless it was flagged
    /// when recorded), grouped under
    /// `served-model:<name>` or `served-provider:<name>`.
    fn llm(&mut self, r: &Llm, policy: &Policy) {
        let Some(model) = r.model.as_deref().filter(|_| r.reason == "forwarded") else {
            self.report.skipped_llm += 1;
            return;
        };
        self.report.replayed_llm += 1;
        let (pattern, reason) = match policy.gateway.models.check_all([model]) {
            Err(denied) => (format!("model:{model}"), denied.reason().to_owned()),
            // Flagged then too: not newly refused.
            Ok(_) if r.violation.is_some() => return,
            Ok(_) => {
                let (served_model, served_provider) =
                    (r.served_model.as_deref(), r.served_provider.as_deref());
                let Some(v) = check_served(&policy.gateway, model, served_model, served_provider)
                else {
                    return;
                };
                let pattern = match v.kind {
                    ServedKind::Model => format!("served-model:{}", served_model.unwrap_or("-")),
                    ServedKind::Provider => {
                        format!("served-provider:{}", served_provider.unwrap_or("-"))
                    }
                };
                (pattern, v.as_str().to_owned())
            }
        };
        let group = self
            .refused
            .entry((pattern.clone(), reason.clone()))
            .or_insert_with(|| Group {
                pattern,
                reason,
                ..Group::default()
            });
        group.count += 1;
        if group.examples.is_empty() {
            group.examples.push(model.to_owned());
        }
    }

    /// The report.
    pub fn finish(mut self) -> Report {
        self.report.newly_refused = self.refused.into_values().collect();
        self.report.newly_allowed = self.allowed.into_values().collect();
        self.report.rerouted = self.rerouted.into_values().collect();
        self.report
    }
}

/// The proxy's decision for this recorded connection under `policy`; `None` when the record
/// lacks what the decision needs.
fn decide(c: &Connection, phase: Phase, policy: &Policy, own_ports: &[u16]) -> Option<Decision> {
    match c.listener.as_str() {
        "sni" => {
            let hello = ClientHello {
                sni: c.sni.clone()?,
                alpn: Vec::new(),
                legacy_version: 0x0303,
                supported_versions: Vec::new(),
                key_share_groups: Vec::new(),
                encrypted: c.encrypted.as_deref().map(|e| match e {
                    "encrypted_server_name" => Encrypted::Esni,
                    _ => Encrypted::Ech,
                }),
            };
            Some(route::decide_hello(&hello, c.orig_dst, phase, policy))
        }
        "capture" => Some(route::decide_capture(c.orig_dst, phase, policy, own_ports)),
        _ => None,
    }
}

fn parse_route(s: &str) -> Option<Route> {
    match s {
        "intercept" => Some(Route::Intercept),
        "tunnel" => Some(Route::Tunnel),
        "reject" => Some(Route::Reject),
        _ => None,
    }
}

impl Report {
    /// The report as text, one group per line.
    pub fn render(&self) -> String {
        let mut out = format!(
            "replayed {} connections ({} skipped: no decision recorded) and {} LLM requests' \
             model checks ({} refused before their model was known)\n",
            self.replayed, self.skipped, self.replayed_llm, self.skipped_llm
        );
        for (title, groups) in [
            ("newly refused", &self.newly_refused),
            ("newly allowed", &self.newly_allowed),
            ("rerouted", &self.rerouted),
        ] {
            let total: u64 = groups.iter().map(|g| g.count).sum();
            out.push_str(&format!("{title}: {total}\n"));
            for g in groups {
                out.push_str(&format!(
                    "  {}  reason={}  count={}  e.g. {}\n",
                    g.pattern,
                    g.reason,
                    g.count,
                    g.examples.join(", ")
                ));
            }
        }
        out
    }
}
