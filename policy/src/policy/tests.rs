use super::*;

fn parse(text: &str) -> Policy {
    Policy::parse(text, "test.toml").unwrap()
}

#[test]
fn embedded_default_parses_and_is_strict() {
    let p = Policy::parse(crate::DEFAULT_POLICY_TOML, "<embedded>").unwrap();
    assert_eq!(p.origin, "<embedded>");
    assert_eq!(p.phase, Phase::Agent);
    assert_eq!(
        p.intercept.0,
        vec![HostPattern::Exact("openrouter.ai".into())]
    );
    assert!(p.allow.is_empty());
    assert!(p.deny.is_empty());
    assert!(p.hosts.is_empty());
    assert_eq!(Policy::embedded_default().summary(), p.summary());
}

#[test]
fn version_alone_gives_every_default() {
    let p = parse("version = 1\n");
    assert_eq!(p.phase, Phase::Agent);
    assert!(p.intercept.is_empty() && p.allow.is_empty() && p.deny.is_empty());
    assert!(p.hosts.is_empty());
    assert_eq!(p.tunnel.connect_timeout, Duration::from_secs(5));
    assert_eq!(p.tunnel.idle_timeout, Duration::from_secs(600));
    // Empty tables are the same as missing ones.
    let q = parse("version = 1\n[intercept]\n[tunnel]\n[hosts]\n");
    assert!(q.intercept.is_empty() && q.hosts.is_empty());
}

#[test]
fn full_policy_compiles_to_normalised_values() {
    let p = parse(
        r#"
version = 1
phase = "verification"
[intercept]
hosts = ["OpenRouter.ai."]
[tunnel]
allow = ["pypi.org", "*.PythonHosted.org"]
deny = ["*"]
connect_timeout = "1s 500ms"
idle_timeout = "1h"
[hosts."PyPI.org"]
pin = ["192.0.2.10", "2001:db8::10"]
port = 8443
allow_ranges = ["127.0.0.1", "10.1.2.3/8", "fd00::/8"]
"#,
    );
    assert_eq!(p.phase, Phase::Verification);
    assert_eq!(
        p.intercept.0,
        vec![HostPattern::Exact("openrouter.ai".into())]
    );
    assert_eq!(p.allow.0[1], HostPattern::Suffix("pythonhosted.org".into()));
    assert_eq!(p.deny.0, vec![HostPattern::Any]);
    assert_eq!(p.tunnel.connect_timeout, Duration::from_millis(1500));
    assert_eq!(p.tunnel.idle_timeout, Duration::from_secs(3600));
    let rule = p.host_rule("pypi.org").unwrap();
    assert_eq!(rule.pattern, HostPattern::Exact("pypi.org".into()));
    assert_eq!(
        rule.pin,
        vec![
            "192.0.2.10".parse::<IpAddr>().unwrap(),
            "2001:db8::10".parse().unwrap()
        ]
    );
    assert_eq!(rule.port, Some(8443));
    let ranges: Vec<String> = rule.allow_ranges.iter().map(ToString::to_string).collect();
    assert_eq!(ranges, ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
}

#[test]
fn host_rule_prefers_exact_then_longest_suffix() {
    let p = parse(
        r#"
version = 1
[hosts."*.example.com"]
port = 1
[hosts."*.b.example.com"]
port = 2
[hosts."a.b.example.com"]
port = 3
"#,
    );
    let port = |h: &str| p.host_rule(h).and_then(|r| r.port);
    assert_eq!(port("a.b.example.com"), Some(3));
    assert_eq!(port("x.b.example.com"), Some(2));
    assert_eq!(port("b.example.com"), Some(1));
    assert_eq!(port("example.com"), None);
    assert_eq!(port("example.org"), None);
    // File order is kept, whatever order serde saw the tables in.
    let order: Vec<String> = p.hosts.iter().map(|r| r.pattern.to_string()).collect();
    assert_eq!(
        order,
        ["*.example.com", "*.b.example.com", "a.b.example.com"]
    );
}

#[test]
fn ech_is_an_opt_in_per_host_rule() {
    let p = parse(
        r#"
version = 1
[hosts."cdn.example"]
ech = true
[hosts."*.cdn.example"]
ech = false
[hosts."pypi.org"]
port = 443
"#,
    );
    let ech = |h: &str| p.host_rule(h).map(|r| r.ech);
    assert_eq!(ech("cdn.example"), Some(true));
    assert_eq!(ech("a.cdn.example"), Some(false));
    assert_eq!(ech("pypi.org"), Some(false), "default off");
    assert_eq!(ech("example.org"), None);
}

#[test]
fn hosts_table_without_pin_resolves() {
    let p = parse("version = 1\n[hosts.\"x.test\"]\nport = 444\n");
    let rule = p.host_rule("x.test").unwrap();
    assert!(rule.pin.is_empty() && rule.allow_ranges.is_empty());
    // Dotted-key and inline-table spellings compile the same way.
    let q = parse("version = 1\nhosts = { \"x.test\" = { port = 444 } }\n");
    assert_eq!(q.host_rule("x.test").unwrap().port, Some(444));
}

#[test]
fn same_pattern_may_appear_in_different_lists() {
    // Routing order (intercept, deny, allow) settles overlaps; only repeats within a list are refused.
    let p = parse(
        "version = 1\n[intercept]\nhosts = [\"a.test\"]\n[tunnel]\nallow = [\"a.test\"]\ndeny = [\"a.test\"]\n",
    );
    assert_eq!(p.allow.len(), 1);
}

#[test]
fn summary_names_origin_version_phase_and_patterns() {
    let p = Policy::parse(
        "version = 1\n[tunnel]\nallow = [\"a.test\", \"*.b.test\", \"c.test\", \"d.test\", \"e.test\", \"f.test\", \"g.test\"]\n[hosts.\"a.test\"]\nport = 1\n",
        "/etc/tollgate/policy.toml",
    )
    .unwrap();
    let s = p.summary();
    assert_eq!(
        s,
        "/etc/tollgate/policy.toml (policy version 1): default phase agent; intercept none; \
         tunnel allow 7 (a.test, *.b.test, c.test, d.test, e.test, +2 more); deny none; \
         host rules 1 (a.test); capture allow none, deny none; connect timeout 5s, idle timeout 10m; dns allow none, upstream resolv.conf, max ttl 1m."
    );
}

#[test]
fn capture_destinations_match_range_and_ports() {
    let p = parse(
        "version = 1\n[capture]\nallow = [{ cidr = \"198.51.100.0/24\", ports = [5432, 6379] }]\ndeny = [{ cidr = \"10.0.0.0/8\" }]\n",
    );
    let db: std::net::SocketAddr = "198.51.100.7:5432".parse().unwrap();
    let web: std::net::SocketAddr = "198.51.100.7:80".parse().unwrap();
    let inner: std::net::SocketAddr = "10.9.9.9:1".parse().unwrap();
    assert_eq!(
        p.capture.allowed(db).unwrap().to_string(),
        "198.51.100.0/24 ports 5432,6379"
    );
    assert!(p.capture.allowed(web).is_none());
    assert_eq!(p.capture.denied(inner).unwrap().to_string(), "10.0.0.0/8");
}

#[test]
fn load_reads_files_and_reports_unreadable_ones_without_a_location() {
    let dir = std::env::temp_dir().join(format!("tollgate-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "version = 1\n").unwrap();
    let p = Policy::load(&good).unwrap();
    assert_eq!(p.origin, good.display().to_string());

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "version = 1\nphase = 3\n").unwrap();
    let e = Policy::load(&bad).unwrap_err();
    assert_eq!((e.line, e.column, e.key.as_str()), (2, 9, "phase"));
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2:9: phase: ", bad.display())),
        "{e}"
    );

    let missing = dir.join("missing.toml");
    let e = Policy::load(&missing).unwrap_err();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(
        e.to_string().starts_with(&format!(
            "{}: cannot read the policy file",
            missing.display()
        )),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
