//! The `iptables-restore --noflush` input that moves the live rules to the plan, one
//! transaction per family, and the comparison `verify` makes.
//!
//! Idempotence without flushing anyone else's rules: declaring a chain (`:TOLLGATE_X - [0:0]`)
//! creates it or empties it; every existing rule in a built-in chain that jumps to a
//! `TOLLGATE_*` chain is deleted by position (highest first, so positions stay valid); the one
//! jump is inserted first in OUTPUT; chains tollgate no longer wants are emptied, then deleted.
//! All of it in one transaction: a failure leaves the family as it was.

use std::collections::BTreeMap;

use crate::rules::{CHAIN_PREFIX, FamilyPlan, HOOK_CHAIN, TABLES};

/// The rules the kernel has now, as `iptables-save` printed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    tables: BTreeMap<String, LiveTable>,
}

/// One table of [`Live`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveTable {
    /// Chains in the order printed: name, whether built in, rule specs (after `-A <chain> `).
    pub chains: Vec<LiveChain>,
}

/// One chain of a [`LiveTable`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveChain {
    /// Its name.
    pub name: String,
    /// Built-in chains have a policy; user chains print `-`.
    pub builtin: bool,
    /// Rule specs in order.
    pub rules: Vec<String>,
}

impl Live {
    /// Parses `iptables-save` output (comments and counters ignored).
    pub fn parse(text: &str) -> Live {
        let mut live = Live::default();
        let mut current: Option<&mut LiveTable> = None;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                current = Some(live.tables.entry(name.to_string()).or_default());
            } else if let (Some(decl), Some(table)) =
                (line.strip_prefix(':'), current.as_deref_mut())
            {
                let mut words = decl.split_whitespace();
                if let Some(name) = words.next() {
                    let builtin = words.next().is_some_and(|policy| policy != "-");
                    table.chains.push(LiveChain {
                        name: name.to_string(),
                        builtin,
                        rules: Vec::new(),
                    });
                }
            } else if let (Some(rule), Some(table)) =
                (line.strip_prefix("-A "), current.as_deref_mut())
            {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                match table.chains.iter_mut().find(|c| c.name == chain) {
                    Some(c) => c.rules.push(spec.to_string()),
                    None => table.chains.push(LiveChain {
                        name: chain.to_string(),
                        builtin: false,
                        rules: vec![spec.to_string()],
                    }),
                }
            } else if line == "COMMIT" {
                current = None;
            }
        }
        live
    }

    /// One table, if the kernel has it.
    pub fn table(&self, name: &str) -> Option<&LiveTable> {
        self.tables.get(name)
    }

    /// Number of rules in all tables (the backend detection's "has rules").
    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| &t.chains)
            .map(|c| c.rules.len())
            .sum()
    }

    /// Whether any `TOLLGATE_*` chain exists.
    pub fn has_tollgate(&self) -> bool {
        self.tables
            .values()
            .any(|t| !t.tollgate_chains().is_empty())
    }
}

impl LiveTable {
    /// Names of the `TOLLGATE_*` chains present.
    pub fn tollgate_chains(&self) -> Vec<&str> {
        self.chains
            .iter()
            .map(|c| c.name.as_str())
            .filter(|n| n.starts_with(CHAIN_PREFIX))
            .collect()
    }

    /// `(chain, 1-based position)` of every built-in-chain rule that jumps to a tollgate chain.
    pub fn tollgate_jumps(&self) -> Vec<(&str, usize)> {
        self.chains
            .iter()
            .filter(|c| c.builtin)
            .flat_map(|c| {
                c.rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| targets_tollgate(r))
                    .map(move |(i, _)| (c.name.as_str(), i + 1))
            })
            .collect()
    }

    fn chain(&self, name: &str) -> Option<&LiveChain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

fn targets_tollgate(spec: &str) -> bool {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with(CHAIN_PREFIX))
}

/// The restore input that installs `plan` over `live` (`None`: as on a fresh namespace).
pub fn render_install(plan: &FamilyPlan, live: Option<&Live>) -> String {
    let mut out = String::new();
    for table in TABLES {
        let want = plan.table(table);
        let have = live.and_then(|l| l.table(table));
        let stale: Vec<&str> = have
            .map(|t| t.tollgate_chains())
            .unwrap_or_default()
            .into_iter()
            .filter(|name| want.is_none_or(|w| w.chains.iter().all(|c| c.name != *name)))
            .collect();
        let jumps = have.map(LiveTable::tollgate_jumps).unwrap_or_default();
        if want.is_none() && stale.is_empty() && jumps.is_empty() {
            continue;
        }
        out.push_str(&format!("*{table}\n"));
        for name in want
            .iter()
            .flat_map(|w| w.chains.iter().map(|c| c.name))
            .chain(stale.iter().copied())
        {
            out.push_str(&format!(":{name} - [0:0]\n"));
        }
        push_deletions(&mut out, &jumps);
        if let Some(w) = want {
            out.push_str(&format!("-I {HOOK_CHAIN} 1 {}\n", w.jump));
            for c in &w.chains {
                for r in &c.rules {
                    out.push_str(&format!("-A {} {r}\n", c.name));
                }
            }
        }
        for name in &stale {
            out.push_str(&format!("-X {name}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The restore input that removes every tollgate chain and jump from `live`; `None` when
/// there is none.
pub fn render_uninstall(live: &Live) -> Option<String> {
    let mut out = String::new();
    for table in TABLES {
        let Some(have) = live.table(table) else {
            continue;
        };
        let chains = have.tollgate_chains();
        let jumps = have.tollgate_jumps();
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        out.push_str(&format!("*{table}\n"));
        for name in &chains {
            out.push_str(&format!(":{name} - [0:0]\n"));
        }
        push_deletions(&mut out, &jumps);
        for name in &chains {
            out.push_str(&format!("-X {name}\n"));
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

fn push_deletions(out: &mut String, jumps: &[(&str, usize)]) {
    let mut jumps = jumps.to_vec();
    // Highest position first within each chain, so earlier deletions do not shift later ones.
    jumps.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    for (chain, pos) in jumps {
        out.push_str(&format!("-D {chain} {pos}\n"));
    }
}

/// How the live rules differ from `plan`: empty when exactly the plan is installed (one jump,
/// first in OUTPUT; every tollgate chain with exactly its rules; no other tollgate chain).
pub fn drift(plan: &FamilyPlan, live: &Live) -> Vec<String> {
    let mut problems = Vec::new();
    for table in TABLES {
        let want = plan.table(table);
        let empty = LiveTable::default();
        let have = live.table(table).unwrap_or(&empty);
        let jumps = have.tollgate_jumps();
        match want {
            None => {
                if !jumps.is_empty() || !have.tollgate_chains().is_empty() {
                    problems.push(format!(
                        "{table}: tollgate chains present but not wanted (--fence off?)"
                    ));
                }
                continue;
            }
            Some(w) => {
                let first = have.chain(HOOK_CHAIN).and_then(|c| c.rules.first());
                if jumps.is_empty() {
                    problems.push(format!(
                        "{table}: no jump from {HOOK_CHAIN} (not installed?)"
                    ));
                } else if jumps.len() > 1 {
                    problems.push(format!(
                        "{table}: {} jumps to tollgate chains, want one",
                        jumps.len()
                    ));
                } else if first != Some(&w.jump) {
                    problems.push(format!(
                        "{table}: the first rule of {HOOK_CHAIN} is `{}`, want `{}`",
                        first.map(String::as_str).unwrap_or("(none)"),
                        w.jump
                    ));
                }
                for c in &w.chains {
                    match have.chain(c.name) {
                        None => problems.push(format!("{table}: chain {} missing", c.name)),
                        Some(l) if l.rules != c.rules => {
                            let missing = c.rules.iter().filter(|r| !l.rules.contains(r)).count();
                            let extra = l.rules.iter().filter(|r| !c.rules.contains(r)).count();
                            problems.push(format!(
                                "{table}: chain {} differs ({missing} rule(s) missing, {extra} unexpected, \
                                 {} live vs {} wanted)",
                                c.name,
                                l.rules.len(),
                                c.rules.len()
                            ));
                        }
                        Some(_) => {}
                    }
                }
                for name in have.tollgate_chains() {
                    if w.chains.iter().all(|c| c.name != name) {
                        problems.push(format!("{table}: unexpected chain {name}"));
                    }
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SAVE: &str = "# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [12:720]
:TOLLGATE_FENCE - [0:0]
-A OUTPUT -m comment --comment \"tollgate/fence-jump\" -j TOLLGATE_FENCE
-A OUTPUT -d 198.51.100.7/32 -j ACCEPT
-A TOLLGATE_FENCE -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:TOLLGATE_OUTPUT - [0:0]
:OTHER - [0:0]
-A OUTPUT -j TOLLGATE_OUTPUT
-A OUTPUT -d 198.51.100.7/32 -j OTHER
-A OUTPUT -g TOLLGATE_OUTPUT
-A OTHER -j RETURN
COMMIT
";

    #[test]
    fn parses_save_output() {
        let live = Live::parse(SAVE);
        let nat = live.table("nat").unwrap();
        assert_eq!(nat.tollgate_chains(), vec!["TOLLGATE_OUTPUT"]);
        assert_eq!(nat.tollgate_jumps(), vec![("OUTPUT", 1), ("OUTPUT", 3)]);
        assert_eq!(
            live.table("filter").unwrap().tollgate_jumps(),
            vec![("OUTPUT", 1)]
        );
        assert_eq!(live.rule_count(), 7);
        assert!(live.has_tollgate());
        assert!(!Live::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").has_tollgate());
    }

    #[test]
    fn uninstall_removes_only_tollgate() {
        let got = render_uninstall(&Live::parse(SAVE)).unwrap();
        let want = "*nat\n:TOLLGATE_OUTPUT - [0:0]\n-D OUTPUT 3\n-D OUTPUT 1\n-X TOLLGATE_OUTPUT\nCOMMIT\n\
                    *filter\n:TOLLGATE_FENCE - [0:0]\n-D OUTPUT 1\n-X TOLLGATE_FENCE\nCOMMIT\n";
        assert_eq!(got, want);
        assert_eq!(
            render_uninstall(&Live::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")),
            None
        );
    }

    #[test]
    fn jump_detection_needs_a_target_word() {
        assert!(targets_tollgate(
            "-m comment --comment \"x\" -j TOLLGATE_OUTPUT"
        ));
        assert!(targets_tollgate("-g TOLLGATE_X"));
        assert!(!targets_tollgate(
            "-m comment --comment TOLLGATE_OUTPUT -j ACCEPT"
        ));
    }
}
