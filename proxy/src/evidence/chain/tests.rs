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
        let line = serde_json::to_string(&chain.next_line(1000 + u64::from(i), record)).unwrap();
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

mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::evidence::record::Connection;

    fn connection(sni: String, bytes_up: u64, rule: Option<String>) -> Record {
        Record::Connection(Box::new(Connection {
            listener: "sni".into(),
            peer: "127.0.0.1:1".into(),
            orig_dst: None,
            sni: Some(sni),
            encrypted: None,
            phase: "agent".into(),
            decided: Some("tunnel".into()),
            route: "tunnel".into(),
            reason: "allow-listed".into(),
            rule,
            bytes_up,
            bytes_down: 0,
            duration_ms: 1,
            end: "closed".into(),
            error: None,
            observed: None,
        }))
    }

    proptest! {
        /// Any text: the verifier returns (an error or a chain), never panics.
        #[test]
        fn verify_never_panics(text in "\\PC*(\n\\PC*){0,4}") {
            let _ = verify(&text);
        }

        /// A written chain of arbitrary records verifies, and changing any one byte of it either
        /// breaks verification or changes the head the receipt holds.
        #[test]
        fn any_one_byte_change_is_detected(
            records in proptest::collection::vec(
                ("\\PC{0,12}", any::<u64>(), proptest::option::of("[a-z*.]{1,8}")), 1..6),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut chain = Chain::default();
            let mut text = String::new();
            for (i, record) in std::iter::once(start("r")).chain(
                records.into_iter().map(|(s, b, r)| connection(s, b, r))).enumerate()
            {
                let line = serde_json::to_string(&chain.next_line(i as u64, record)).unwrap();
                chain.push(&line).unwrap();
                text.push_str(&line);
                text.push('\n');
            }
            let head = chain.summary().head.clone();
            let verified = verify(&text).unwrap();
            prop_assert_eq!(&verified.summary().head, &head);
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let tampered = String::from_utf8_lossy(&bytes);
            match verify(&tampered) {
                Err(_) => {}
                Ok(c) => prop_assert_ne!(&c.summary().head, &head),
            }
        }
    }
}
