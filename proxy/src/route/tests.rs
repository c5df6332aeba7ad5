#![allow(clippy::unwrap_used)]
use super::*;

const POLICY: &str = r#"
version = 1
[intercept]
hosts = ["openrouter.ai", "*.llm.test"]
[tunnel]
allow = ["pypi.org", "*.pythonhosted.org", "both.test"]
deny = ["both.test", "*.evil.test"]
"#;

fn policy() -> Policy {
    Policy::parse(POLICY, "test.toml").unwrap()
}

#[test]
fn decides_every_case_in_both_phases() {
    use Phase::{Agent, Verification};
    let p = policy();
    type Case<'a> = (&'a str, Phase, Route, &'a str, Option<&'a str>);
    let cases: &[Case] = &[
        (
            "openrouter.ai",
            Agent,
            Route::Intercept,
            "intercept",
            Some("openrouter.ai"),
        ),
        (
            "openrouter.ai",
            Verification,
            Route::Intercept,
            "intercept",
            Some("openrouter.ai"),
        ),
        (
            "api.llm.test",
            Agent,
            Route::Intercept,
            "intercept",
            Some("*.llm.test"),
        ),
        (
            "pypi.org",
            Agent,
            Route::Tunnel,
            "allow-listed",
            Some("pypi.org"),
        ),
        (
            "files.pythonhosted.org",
            Agent,
            Route::Tunnel,
            "allow-listed",
            Some("*.pythonhosted.org"),
        ),
        (
            "pythonhosted.org",
            Agent,
            Route::Reject,
            "not-allow-listed",
            None,
        ),
        (
            "example.com",
            Agent,
            Route::Reject,
            "not-allow-listed",
            None,
        ),
        (
            "example.com",
            Verification,
            Route::Tunnel,
            "verification-open",
            None,
        ),
        (
            "pypi.org",
            Verification,
            Route::Tunnel,
            "verification-open",
            Some("pypi.org"),
        ),
        // Deny wins over allow, in both phases.
        (
            "both.test",
            Agent,
            Route::Reject,
            "denied",
            Some("both.test"),
        ),
        (
            "both.test",
            Verification,
            Route::Reject,
            "denied",
            Some("both.test"),
        ),
        (
            "x.evil.test",
            Verification,
            Route::Reject,
            "denied",
            Some("*.evil.test"),
        ),
    ];
    for &(sni, phase, route, reason, rule) in cases {
        let d = decide(sni, None, phase, &p);
        assert_eq!(
            (d.route, d.reason, d.rule.as_deref()),
            (route, reason, rule),
            "{sni} in {phase:?}"
        );
    }
}

#[test]
fn the_original_destination_does_not_change_the_decision() {
    let p = policy();
    let metadata = Some("169.254.169.254:443".parse().unwrap());
    assert_eq!(
        decide("pypi.org", metadata, Phase::Agent, &p),
        decide("pypi.org", None, Phase::Agent, &p)
    );
}

#[test]
fn the_embedded_default_intercepts_openrouter_and_nothing_else() {
    let p = Policy::embedded_default();
    assert_eq!(
        decide("openrouter.ai", None, Phase::Agent, &p).route,
        Route::Intercept
    );
    assert_eq!(
        decide("pypi.org", None, Phase::Agent, &p).route,
        Route::Reject
    );
    assert_eq!(
        decide("github.com", None, Phase::Agent, &p).reason,
        "not-allow-listed"
    );
}

const CAPTURE: &str = r#"
version = 1
[capture]
allow = [{ cidr = "198.51.100.0/24", ports = [5432] }, { cidr = "10.1.2.3" }]
deny = [{ cidr = "10.0.0.0/8" }, { cidr = "203.0.113.0/24", ports = [22] }]
"#;

#[test]
fn decides_captured_connections_by_original_destination() {
    use Phase::{Agent, Verification};
    let p = Policy::parse(CAPTURE, "capture.toml").unwrap();
    let own = [15443, 15001, 15090];
    type Case<'a> = (Option<&'a str>, Phase, Route, &'a str, Option<&'a str>);
    let cases: &[Case] = &[
        (
            None,
            Verification,
            Route::Reject,
            "no-original-destination",
            None,
        ),
        (
            Some("169.254.169.254:80"),
            Verification,
            Route::Reject,
            "metadata",
            None,
        ),
        (
            Some("[fd00:ec2::254]:80"),
            Verification,
            Route::Reject,
            "metadata",
            None,
        ),
        (
            Some("[::ffff:169.254.169.254]:80"),
            Verification,
            Route::Reject,
            "metadata",
            None,
        ),
        (
            Some("198.51.100.9:15090"),
            Verification,
            Route::Reject,
            "proxy-port",
            None,
        ),
        (
            Some("198.51.100.9:5432"),
            Agent,
            Route::Tunnel,
            "allow-listed",
            Some("198.51.100.0/24 ports 5432"),
        ),
        (
            Some("198.51.100.9:80"),
            Agent,
            Route::Reject,
            "not-allow-listed",
            None,
        ),
        (
            Some("198.51.100.9:80"),
            Verification,
            Route::Tunnel,
            "verification-open",
            None,
        ),
        // Deny wins over allow (10.1.2.3 is in both), in both phases.
        (
            Some("10.1.2.3:80"),
            Agent,
            Route::Reject,
            "denied",
            Some("10.0.0.0/8"),
        ),
        (
            Some("203.0.113.5:22"),
            Verification,
            Route::Reject,
            "denied",
            Some("203.0.113.0/24 ports 22"),
        ),
        (
            Some("203.0.113.5:23"),
            Verification,
            Route::Tunnel,
            "verification-open",
            None,
        ),
    ];
    for &(dst, phase, route, reason, rule) in cases {
        let dst = dst.map(|d| d.parse().unwrap());
        let d = decide_capture(dst, phase, &p, &own);
        assert_eq!(
            (d.route, d.reason, d.rule.as_deref()),
            (route, reason, rule),
            "{dst:?} in {phase:?}"
        );
    }
}
