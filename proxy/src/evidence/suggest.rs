//! `tollgate suggest`: the smallest routing policy that would have allowed what an observed run
//! did. It reads connection records that carry `observed` (the agent-phase decision observe mode
//! recorded) and allows, exactly, each host and captured destination the agent phase would have
//! refused for want of an allow entry; wildcards only with `--collapse-subdomains`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::record::{Connection, Record};
use super::replay::{ReplayError, records};
use crate::route::Reason;

/// What an observed run reached, accumulated over files.
#[derive(Debug, Default)]
pub struct Observed {
    intercept: BTreeSet<String>,
    allow: BTreeSet<String>,
    capture: BTreeMap<String, BTreeSet<u16>>,
    /// Refusals a policy cannot lift (deny list, metadata, ECH...), as comments.
    left: BTreeMap<String, BTreeSet<String>>,
    records: u64,
}

impl Observed {
    /// Reads one decisions file's connection records.
    pub fn file(&mut self, file: &str, text: &str) -> Result<(), ReplayError> {
        for record in records(file, text) {
            if let Record::Connection(c) = record? {
                self.connection(&c);
            }
        }
        Ok(())
    }

    fn connection(&mut self, c: &Connection) {
        // Only agent-phase decisions say what the agent needed.
        let Some(observed) = c.observed.as_ref().filter(|_| c.phase == "agent") else {
            return;
        };
        self.records += 1;
        let target = c
            .sni
            .clone()
            .or_else(|| c.orig_dst.map(|a| a.to_string()))
            .unwrap_or_else(|| "-".to_owned());
        match (observed.route.as_str(), observed.reason.as_str()) {
            ("intercept", _) => {
                if let Some(rule) = &observed.rule {
                    self.intercept.insert(rule.clone());
                }
            }
            (route, why)
                if route == "tunnel"
                    || (route == "reject" && why == Reason::NotAllowListed.as_str()) =>
            {
                match (&c.sni, c.orig_dst) {
                    (Some(sni), _) => {
                        self.allow.insert(sni.clone());
                    }
                    (None, Some(dst)) => {
                        self.capture_allow(dst);
                    }
                    (None, None) => {}
                }
            }
            (_, why) => {
                self.left.entry(why.to_owned()).or_default().insert(target);
            }
        }
    }

    fn capture_allow(&mut self, dst: SocketAddr) {
        let ip = dst.ip().to_canonical().to_string();
        self.capture.entry(ip).or_default().insert(dst.port());
    }

    /// The policy TOML.
    pub fn policy(&self, collapse: bool) -> String {
        let hosts = if collapse {
            collapse_subdomains(&self.allow)
        } else {
            self.allow.clone()
        };
        let mut out = format!(
            "# Suggested by `tollgate suggest` from {} observed agent-phase connections.\n\
             # Routing only: merge the gateway settings ([intercept] budget, auth...) of the\n\
             # policy the run used. Check it with `tollgate check`, gate it with `tollgate replay`.\n\
             version = 1\nphase = \"agent\"\n\n[intercept]\nhosts = {}\n\n[tunnel]\nallow = {}\n",
            self.records,
            toml_list(self.intercept.iter()),
            toml_list(hosts.iter()),
        );
        if !self.capture.is_empty() {
            out.push_str("\n[capture]\nallow = [\n");
            for (ip, ports) in &self.capture {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                out.push_str(&format!(
                    "  {{ cidr = \"{ip}\", ports = [{}] }},\n",
                    ports.join(", ")
                ));
            }
            out.push_str("]\n");
        }
        for (why, targets) in &self.left {
            let list: Vec<&str> = targets.iter().map(String::as_str).take(10).collect();
            out.push_str(&format!(
                "# still refused ({why}; no allow entry lifts it): {}\n",
                list.join(", ")
            ));
        }
        out
    }
}

fn toml_list<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let quoted: Vec<String> = items
        .map(|s| serde_json::Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// Replaces two or more hosts under one parent of at least two labels (`a.example.com`,
/// `b.example.com`) by `*.example.com`; the parent itself stays exact if it was reached. A
/// heuristic without the public-suffix list: it is the operator's choice, never the default.
pub fn collapse_subdomains(hosts: &BTreeSet<String>) -> BTreeSet<String> {
    let mut children: BTreeMap<&str, usize> = BTreeMap::new();
    for host in hosts {
        if let Some((_, parent)) = host.split_once('.')
            && parent.contains('.')
        {
            *children.entry(parent).or_default() += 1;
        }
    }
    hosts
        .iter()
        .map(|host| match host.split_once('.') {
            Some((_, parent)) if children.get(parent).is_some_and(|&n| n >= 2) => {
                format!("*.{parent}")
            }
            _ => host.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_only_shared_parents() {
        let hosts: BTreeSet<String> = ["a.example.com", "b.example.com", "pypi.org", "x.co"]
            .into_iter()
            .map(String::from)
            .collect();
        let got: Vec<String> = collapse_subdomains(&hosts).into_iter().collect();
        assert_eq!(got, ["*.example.com", "pypi.org", "x.co"]);
    }
}
