#![allow(clippy::unwrap_used)]
use super::*;
use crate::client_hello::{ClientHello, Encrypted};

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
            (d.route, d.reason.as_str(), d.rule.as_deref()),
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
        decide("github.com", None, Phase::Agent, &p).reason.as_str(),
        "not-allow-listed"
    );
}

const CAPTURE: &str = r#"
version = 1
[capture]
allow = [
    { cidr = "198.51.100.0/24", ports = [5432] },
    { cidr = "10.1.2.3" },
    { cidr = "172.20.0.0/16", ports = [6379] },
    { cidr = "fd12::/16" },
    { cidr = "169.254.169.254" },
    { cidr = "168.63.129.16" },
]
deny = [{ cidr = "10.0.0.0/8" }, { cidr = "203.0.113.0/24", ports = [22] }]
"#;

#[test]
fn decides_captured_connections_by_original_destination() {
    use Phase::{Agent, Verification};
    let p = Policy::parse(CAPTURE, "capture.toml").unwrap();
    let own = [15443, 15001, 15090, 8080];
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
        // A v4-mapped spelling matches the IPv4 entries, deny and allow alike.
        (
            Some("[::ffff:203.0.113.5]:22"),
            Verification,
            Route::Reject,
            "denied",
            Some("203.0.113.0/24 ports 22"),
        ),
        (
            Some("[::ffff:172.20.1.2]:6379"),
            Agent,
            Route::Tunnel,
            "allow-listed",
            Some("172.20.0.0/16 ports 6379"),
        ),
        // The usage port is one of the proxy's own.
        (
            Some("198.51.100.9:8080"),
            Verification,
            Route::Reject,
            "proxy-port",
            None,
        ),
        // An allow entry that names a metadata endpoint opens nothing.
        (
            Some("169.254.169.254:80"),
            Agent,
            Route::Reject,
            "metadata",
            None,
        ),
        (
            Some("168.63.129.16:32526"),
            Verification,
            Route::Reject,
            "metadata",
            None,
        ),
        // A non-public destination the allow list names passes, in both phases.
        (
            Some("172.20.1.2:6379"),
            Agent,
            Route::Tunnel,
            "allow-listed",
            Some("172.20.0.0/16 ports 6379"),
        ),
        (
            Some("172.20.1.2:6379"),
            Verification,
            Route::Tunnel,
            "verification-open",
            Some("172.20.0.0/16 ports 6379"),
        ),
        (
            Some("[fd12::5]:443"),
            Verification,
            Route::Tunnel,
            "verification-open",
            Some("fd12::/16"),
        ),
        // The same range on another port is not named: refused as non-public.
        (
            Some("172.20.1.2:6380"),
            Verification,
            Route::Reject,
            "non-public-address",
            None,
        ),
        (
            Some("172.20.1.2:6380"),
            Agent,
            Route::Reject,
            "non-public-address",
            None,
        ),
    ];
    for &(dst, phase, route, reason, rule) in cases {
        let dst = dst.map(|d| d.parse().unwrap());
        let d = decide_capture(dst, phase, &p, &own);
        assert_eq!(
            (d.route, d.reason.as_str(), d.rule.as_deref()),
            (route, reason, rule),
            "{dst:?} in {phase:?}"
        );
    }
}

/// Destinations an agent's leftover daemon would aim at in the verification phase, one per
/// non-public kind: every one is refused unless `[capture] allow` names it.
#[test]
fn non_public_capture_destinations_are_refused_in_both_phases() {
    let open = Policy::parse("version = 1\n", "open.toml").unwrap();
    let own = [15443, 15001, 15090, 8080];
    let metadata = [
        "169.254.169.254:80",
        "[fd00:ec2::254]:80",
        "169.254.170.2:80",
        "169.254.170.23:80",
        "[fd00:ec2::23]:80",
        "168.63.129.16:80",
        "100.100.100.200:80",
        "[::ffff:169.254.170.23]:80",
        "[64:ff9b::a9fe:a9fe]:80",
    ];
    let non_public = [
        "127.0.0.1:6443",
        "[::1]:6443",
        "10.0.0.1:10250",
        "172.16.5.4:10250",
        "192.168.1.1:22",
        "100.64.0.10:53",
        "169.254.1.1:80",
        "[fe80::1]:80",
        "[fd00::1]:80",
        "0.0.0.0:80",
        "192.0.0.170:80",
        "198.18.0.1:80",
        "224.0.0.1:80",
        "[::ffff:10.0.0.1]:80",
        "[::ffff:0:10.0.0.1]:80",
        "[64:ff9b::10.0.0.1]:80",
        "[64:ff9b:1::a00:1]:80",
        "[2002:a00:1::1]:80",
        "[2001::1]:80",
    ];
    for phase in [Phase::Agent, Phase::Verification] {
        for dst in metadata {
            let d = decide_capture(Some(dst.parse().unwrap()), phase, &open, &own);
            assert_eq!(
                (d.route, d.reason.as_str()),
                (Route::Reject, "metadata"),
                "{dst}"
            );
        }
        for dst in non_public {
            let d = decide_capture(Some(dst.parse().unwrap()), phase, &open, &own);
            assert_eq!(
                (d.route, d.reason.as_str()),
                (Route::Reject, "non-public-address"),
                "{dst} in {phase:?}"
            );
        }
    }
    // The documentation ranges stay public (the end-to-end tests' world).
    for dst in ["192.0.2.2:80", "198.51.100.9:80", "[2001:db8::2]:80"] {
        let d = decide_capture(Some(dst.parse().unwrap()), Phase::Verification, &open, &own);
        assert_eq!(d.route, Route::Tunnel, "{dst}");
    }
}

#[test]
fn the_tunnel_and_the_capture_router_share_the_non_public_reason() {
    let error = crate::tunnel::DialError::NonPublic {
        addr: "10.0.0.1".parse().unwrap(),
        kind: "private",
    };
    assert_eq!(error.reason(), Reason::NonPublicAddress);
}

const ECH_POLICY: &str = r#"
version = 1
[intercept]
hosts = ["openrouter.ai"]
[tunnel]
allow = ["pypi.org", "cdn.test", "*.ech.test"]
deny = ["denied.test"]
[hosts."cdn.test"]
ech = true
[hosts."*.ech.test"]
ech = true
[hosts."pypi.org"]
port = 443
"#;

fn hello(sni: &str, encrypted: Option<Encrypted>) -> ClientHello {
    ClientHello {
        sni: sni.to_owned(),
        alpn: Vec::new(),
        legacy_version: 0x0303,
        supported_versions: vec![0x0304],
        key_share_groups: vec![0x001d],
        encrypted,
    }
}

#[test]
fn ech_hellos_are_refused_unless_the_host_opts_in() {
    use Phase::{Agent, Verification};
    let p = Policy::parse(ECH_POLICY, "ech.toml").unwrap();
    type Case<'a> = (&'a str, Option<Encrypted>, Phase, Route, &'a str);
    let ech = Some(Encrypted::Ech);
    let esni = Some(Encrypted::Esni);
    let cases: &[Case] = &[
        // Without the extension nothing changes.
        ("pypi.org", None, Agent, Route::Tunnel, "allow-listed"),
        (
            "example.com",
            None,
            Verification,
            Route::Tunnel,
            "verification-open",
        ),
        // With it, a tunnel is refused in both phases, also for a host with a rule without ech.
        ("pypi.org", ech, Agent, Route::Reject, "ech"),
        ("pypi.org", esni, Agent, Route::Reject, "ech"),
        ("example.com", ech, Verification, Route::Reject, "ech"),
        // Opted-in hosts tunnel it.
        ("cdn.test", ech, Agent, Route::Tunnel, "allow-listed"),
        (
            "a.ech.test",
            ech,
            Verification,
            Route::Tunnel,
            "verification-open",
        ),
        ("a.ech.test", esni, Agent, Route::Tunnel, "allow-listed"),
        // Intercepted hosts are terminated here: nothing hidden reaches anyone.
        ("openrouter.ai", ech, Agent, Route::Intercept, "intercept"),
        // Rejections keep their own reason.
        ("other.test", ech, Agent, Route::Reject, "not-allow-listed"),
        ("denied.test", ech, Verification, Route::Reject, "denied"),
    ];
    for &(sni, encrypted, phase, route, reason) in cases {
        let d = decide_hello(&hello(sni, encrypted), None, phase, &p);
        assert_eq!(
            (d.route, d.reason.as_str()),
            (route, reason),
            "{sni} {encrypted:?} in {phase:?}"
        );
    }
    // The refusal keeps the rule that would have let the host through, for the log.
    let d = decide_hello(&hello("pypi.org", ech), None, Agent, &p);
    assert_eq!(d.rule.as_deref(), Some("pypi.org"));
}
