use std::str::FromStr;

use hickory_proto::rr::Name;
use hickory_proto::rr::rdata::{A, TXT};

use super::*;

const POLICY: &str = r#"
version = 1
[intercept]
hosts = ["openrouter.ai"]
[tunnel]
allow = ["pypi.org", "*.pythonhosted.org"]
deny = ["upload.pythonhosted.org", "evil.example"]
[dns]
allow = ["api.tools.svc.cluster.local"]
max_ttl = "30s"
"#;

fn policy() -> Policy {
    Policy::parse(POLICY, "test").unwrap()
}

fn search() -> Vec<String> {
    ["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        .map(String::from)
        .to_vec()
}

fn query_bytes(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Question::query(Name::from_str(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn verdict(name: &str, t: RecordType, phase: Phase) -> (Action, &'static str, Option<String>) {
    let q = parse(&query_bytes(name, t)).unwrap();
    let v = decide(&q, phase, &policy(), &search());
    (v.action, v.outcome.as_str(), v.rule)
}

#[test]
fn agent_phase_forwards_only_routable_names() {
    use Phase::Agent;
    let fwd = |rule: &str| (Action::Forward, "forwarded", Some(rule.to_string()));
    let nx = |why| (Action::Local(ResponseCode::NXDomain), why, None);
    assert_eq!(
        verdict("OpenRouter.AI.", RecordType::A, Agent),
        fwd("openrouter.ai")
    );
    assert_eq!(
        verdict("pypi.org", RecordType::AAAA, Agent),
        fwd("pypi.org")
    );
    assert_eq!(
        verdict("files.pythonhosted.org", RecordType::CNAME, Agent),
        fwd("*.pythonhosted.org")
    );
    assert_eq!(
        verdict("api.tools.svc.cluster.local", RecordType::A, Agent),
        fwd("api.tools.svc.cluster.local")
    );
    assert_eq!(
        verdict("6c65616b.attacker.example", RecordType::A, Agent),
        nx("not-allow-listed")
    );
    assert_eq!(
        verdict("upload.pythonhosted.org", RecordType::A, Agent),
        (
            Action::Local(ResponseCode::NXDomain),
            "denied",
            Some("upload.pythonhosted.org".into())
        )
    );
    assert_eq!(
        verdict("10.0.0.1", RecordType::A, Agent),
        nx("invalid-name")
    );
}

#[test]
fn record_types() {
    use Phase::{Agent, Verification};
    let notimp = verdict("pypi.org", RecordType::TXT, Agent);
    assert_eq!(
        (notimp.0, notimp.1),
        (Action::Local(ResponseCode::NotImp), "type-not-allowed")
    );
    for t in [RecordType::NULL, RecordType::ANY, RecordType::MX] {
        assert_eq!(verdict("pypi.org", t, Agent).1, "type-not-allowed");
    }
    for phase in [Agent, Verification] {
        for t in [RecordType::HTTPS, RecordType::SVCB] {
            let v = verdict("pypi.org", t, phase);
            assert_eq!(
                (v.0, v.1),
                (Action::Local(ResponseCode::NoError), "empty-type")
            );
        }
    }
    assert_eq!(
        verdict("pypi.org", RecordType::TXT, Verification).0,
        Action::Forward
    );
    // An unlisted name is NXDOMAIN whatever the type.
    assert_eq!(
        verdict("x.attacker.example", RecordType::TXT, Agent).1,
        "not-allow-listed"
    );
}

#[test]
fn verification_phase_forwards_everything_not_denied() {
    use Phase::Verification;
    assert_eq!(
        verdict("random.attacker.example", RecordType::A, Verification),
        (Action::Forward, "forwarded", None)
    );
    assert_eq!(
        verdict("evil.example", RecordType::A, Verification).1,
        "denied"
    );
    assert_eq!(
        verdict("openrouter.ai", RecordType::A, Verification).0,
        Action::Forward
    );
}

#[test]
fn search_expansions_of_routable_names_are_answered_locally() {
    for phase in [Phase::Agent, Phase::Verification] {
        for name in [
            "openrouter.ai.ns.svc.cluster.local",
            "openrouter.ai.svc.cluster.local",
            "pypi.org.cluster.local",
        ] {
            let v = verdict(name, RecordType::A, phase);
            assert_eq!(
                (v.0, v.1),
                (Action::Local(ResponseCode::NXDomain), "search-expansion"),
                "{name}"
            );
        }
    }
    // A real cluster name is not an expansion: allow-listed, it is forwarded.
    assert_eq!(
        verdict("api.tools.svc.cluster.local", RecordType::A, Phase::Agent).0,
        Action::Forward
    );
}

#[test]
fn disabled_answers_every_name_nxdomain() {
    let mut p = policy();
    p.dns.enabled = false;
    let q = parse(&query_bytes("openrouter.ai", RecordType::A)).unwrap();
    let v = decide(&q, Phase::Verification, &p, &[]);
    assert_eq!(v.outcome, Outcome::Disabled);
}

#[test]
fn parse_rejects_what_is_not_one_standard_in_question() {
    assert!(matches!(
        parse(&[0u8; 3]),
        Err(Rejected::Drop(Outcome::Malformed))
    ));
    assert!(matches!(
        parse(&[0u8; 600]),
        Err(Rejected::Drop(Outcome::TooLarge))
    ));
    let mut m = Message::new(1, MessageType::Query, OpCode::Query);
    m.add_query(Question::query(
        Name::from_str("a.com.").unwrap(),
        RecordType::A,
    ));
    m.add_query(Question::query(
        Name::from_str("b.com.").unwrap(),
        RecordType::A,
    ));
    let Err(Rejected::Answer { outcome, response }) = parse(&m.to_vec().unwrap()) else {
        panic!("two questions accepted");
    };
    assert_eq!(outcome, Outcome::QuestionCount);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    let mut q = Question::query(Name::from_str("version.bind.").unwrap(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    let mut m = Message::new(1, MessageType::Query, OpCode::Query);
    m.add_query(q);
    assert!(matches!(
        parse(&m.to_vec().unwrap()),
        Err(Rejected::Answer {
            outcome: Outcome::NotInternet,
            ..
        })
    ));
    let mut r = Message::new(1, MessageType::Response, OpCode::Query);
    r.add_query(Question::query(
        Name::from_str("a.com.").unwrap(),
        RecordType::A,
    ));
    assert!(matches!(
        parse(&r.to_vec().unwrap()),
        Err(Rejected::Drop(Outcome::Malformed))
    ));
}

#[test]
fn relay_filters_types_and_caps_ttls() {
    let q = parse(&query_bytes("pypi.org.", RecordType::A)).unwrap();
    let sent = upstream_query(&q, 99);
    let mut answer = Message::new(99, MessageType::Response, OpCode::Query);
    answer.add_query(sent.queries[0].clone());
    let name = Name::from_str("pypi.org.").unwrap();
    answer.add_answer(Record::from_rdata(
        name.clone(),
        3600,
        RData::A(A::new(192, 0, 2, 7)),
    ));
    answer.add_answer(Record::from_rdata(
        name,
        3600,
        RData::TXT(TXT::new(vec!["leak".into()])),
    ));
    let out = relay(&q, 99, &answer.to_vec().unwrap(), Phase::Agent, 30).unwrap();
    assert_eq!(out.metadata.id, 7);
    assert_eq!(out.answers.len(), 1);
    assert_eq!(out.answers[0].ttl, 30);
    assert_eq!(
        relay(&q, 98, &answer.to_vec().unwrap(), Phase::Agent, 30).unwrap_err(),
        BadAnswer::Mismatch
    );
    answer.metadata.truncation = true;
    assert_eq!(
        relay(&q, 99, &answer.to_vec().unwrap(), Phase::Agent, 30).unwrap_err(),
        BadAnswer::Truncated
    );
}

#[test]
fn upstream_query_carries_only_the_question() {
    let mut m = Message::new(5, MessageType::Query, OpCode::Query);
    m.metadata.checking_disabled = true;
    m.add_query(Question::query(
        Name::from_str("pypi.org.").unwrap(),
        RecordType::A,
    ));
    m.add_additional(Record::from_rdata(
        Name::from_str("x.").unwrap(),
        1,
        RData::TXT(TXT::new(vec!["smuggled".into()])),
    ));
    let q = parse(&m.to_vec().unwrap()).unwrap();
    let up = upstream_query(&q, 1234);
    assert_eq!(up.metadata.id, 1234);
    assert!(!up.metadata.checking_disabled);
    assert!(up.additionals.is_empty() && up.answers.is_empty());
    assert_eq!(up.queries.len(), 1);
}

#[test]
fn oversized_udp_answers_are_truncated() {
    let q = parse(&query_bytes("pypi.org.", RecordType::A)).unwrap();
    let mut msg = local_answer(&q, ResponseCode::NoError);
    for i in 0..60u8 {
        msg.add_answer(Record::from_rdata(
            Name::from_str("pypi.org.").unwrap(),
            1,
            RData::A(A::new(192, 0, 2, i)),
        ));
    }
    let bytes = encode(&msg, 512).unwrap();
    let back = Message::from_vec(&bytes).unwrap();
    assert!(back.metadata.truncation && back.answers.is_empty());
    assert_eq!(back.metadata.id, 7);
    assert!(encode(&msg, 65535).unwrap().len() > 512);
}
