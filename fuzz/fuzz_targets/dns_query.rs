//! Fuzzes the DNS stage's pure path: parse a query, decide it under a fixed policy in the phase
//! the first byte picks, build the local answer, and relay the same bytes as if they were the
//! upstream's answer. No panic on any input; in the agent phase a forwarded query always names
//! the policy rule that allowed it; an answer encoded for UDP never exceeds the client's limit.
//!
//! Input: `[phase, query ..]` (`phase & 1`: 0 agent, 1 verification).
#![no_main]

use std::sync::OnceLock;

use hickory_proto::op::ResponseCode;
use libfuzzer_sys::fuzz_target;
use tollgate::fuzz::decide::{self, Action, Rejected};
use tollgate_policy::{Phase, Policy};

const POLICY: &str = r#"version = 1
[intercept]
hosts = ["openrouter.ai"]
[tunnel]
allow = ["pypi.org", "*.pythonhosted.org"]
deny = ["upload.pythonhosted.org"]
[dns]
allow = ["*.svc.cluster.local"]
"#;

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| Policy::parse(POLICY, "fuzz").expect("the fuzz policy parses"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&phase, bytes)) = data.split_first() else {
        return;
    };
    let phase = if phase & 1 == 0 { Phase::Agent } else { Phase::Verification };
    let search = ["ns.svc.cluster.local".to_string(), "cluster.local".to_string()];
    let query = match decide::parse(bytes) {
        Ok(q) => q,
        Err(Rejected::Answer { response, .. }) => {
            let _ = decide::encode(&response, 512);
            return;
        }
        Err(Rejected::Drop(_)) => return,
    };
    let verdict = decide::decide(&query, phase, policy(), &search);
    if verdict.action == Action::Forward && phase == Phase::Agent {
        assert!(verdict.rule.is_some(), "agent phase forwarded a name no rule allows");
    }
    let code = match verdict.action {
        Action::Local(code) => code,
        Action::Forward => ResponseCode::ServFail,
    };
    let answer = decide::local_answer(&query, code);
    if let Some(bytes) = decide::encode(&answer, query.udp_limit()) {
        assert!(bytes.len() <= query.udp_limit());
    }
    if let Ok(relayed) = decide::relay(&query, query.id, bytes, phase, 30) {
        assert!(relayed.answers.iter().all(|r| r.ttl <= 30));
        let _ = decide::encode(&relayed, query.udp_limit());
    }
});

