#![allow(clippy::unwrap_used)]
use super::*;
use crate::evidence::record::{PolicyVersion, Start};

fn start(run_id: &str) -> Record {
    Record::Start(Start {
        run_id: run_id.into(),
        commit: "c".into(),
        version: "v".into(),
        budget_micros: Some(5),
        own_ports: vec![15090],
        broken_chain: None,
        truncated_bytes: 0,
        observe: false,
    })
}

fn policy(n: u8) -> Record {
    Record::Policy(PolicyVersion {
        sha256: sha256_hex(&[n]),
        origin: "p".into(),
    })
}

fn build(n: u8) -> Vec<String> {
    let mut chain = Chain::default();
    let mut lines = Vec::new();
    for i in 0..n {
        let record = if i == 0 { start("run-1") } else { policy(i) };
        let line = chain.line(1000 + u64::from(i), record).unwrap();
        chain.push(&line).unwrap();
        lines.push(line);
    }
    lines
}

fn text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn a_written_chain_verifies_and_sums_up() {
    let lines = build(4);
    let chain = verify(&text(&lines)).unwrap();
    let s = chain.summary();
    assert_eq!(s.records, 4);
    assert_eq!(s.run_id, "run-1");
    assert_eq!(s.head, sha256_hex(lines[3].as_bytes()));
    assert_eq!(s.policies.len(), 3);
    assert_eq!(s.llm.budget_micros, Some(5));
}

#[test]
fn edits_drops_and_swaps_name_the_line() {
    let lines = build(5);
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"ts_ms\":1001", "\"ts_ms\":1002");
    assert_eq!(
        verify(&text(&edited)).unwrap_err(),
        ChainError::Prev { line: 3, before: 2 }
    );
    let mut dropped = lines.clone();
    dropped.remove(2);
    assert!(matches!(
        verify(&text(&dropped)).unwrap_err(),
        ChainError::Seq { line: 3, .. }
    ));
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    assert!(matches!(
        verify(&text(&swapped)).unwrap_err(),
        ChainError::Seq { line: 3, .. }
    ));
    let mut headless = lines.clone();
    headless.remove(0);
    assert_eq!(verify(&text(&headless)).unwrap_err(), ChainError::NoStart);
}

#[test]
fn the_genesis_binds_the_run_id() {
    let lines = build(2);
    let forged = lines[0].replace("run-1", "run-2");
    assert_eq!(
        verify(&format!("{forged}\n")).unwrap_err(),
        ChainError::Genesis {
            run_id: "run-2".into()
        }
    );
}
