//! install → verify → install again → uninstall, on both backends, around other tools' rules;
//! dry runs; backend detection; every self-test failure code; the privilege and binary errors.

use crate::netns::{Netns, normalise, require_root, sock};

/// Rules another tool (a CNI, an operator) put there before us; they must survive everything.
fn foreign_rules(ns: &Netns, backend: &str) {
    for (tool, addr) in [
        ("iptables", "198.51.100.7"),
        ("ip6tables", "2001:db8:ffff::7"),
    ] {
        let t = format!("{tool}-{backend}");
        ns.ok(&[
            &t, "-w", "5", "-t", "nat", "-A", "OUTPUT", "-d", addr, "-p", "tcp", "-j", "ACCEPT",
        ]);
        ns.ok(&[&t, "-w", "5", "-N", "OTHER"]);
        ns.ok(&[&t, "-w", "5", "-A", "OTHER", "-j", "RETURN"]);
        ns.ok(&[&t, "-w", "5", "-A", "OUTPUT", "-d", addr, "-j", "OTHER"]);
    }
}

fn saves(ns: &Netns, backend: &str) -> String {
    format!(
        "{}\n{}",
        normalise(&ns.save(&format!("iptables-{backend}-save"))),
        normalise(&ns.save(&format!("ip6tables-{backend}-save")))
    )
}

/// The whole lifecycle on one backend (`flag` selects it, or "auto").
fn lifecycle(backend: &str, flag: &str) {
    let ns = Netns::new();
    foreign_rules(&ns, backend);
    let before = saves(&ns, backend);
    let args = ["--backend", flag];

    let first = ns.init_ok(&args);
    assert!(
        first.stdout.contains(&format!("backend {backend}")),
        "{first}"
    );
    assert!(
        first.stdout.contains("installed and self-tested"),
        "{first}"
    );
    assert_eq!(
        first.stdout.matches(": ok ").count(),
        14,
        "7 checks × 2 families: {first}"
    );
    assert!(
        !first.stdout.contains("FAIL") && !first.stdout.contains("skip"),
        "{first}"
    );
    assert!(
        first
            .stdout
            .contains("original destination [2001:db8::1]:443"),
        "{first}"
    );
    let installed = saves(&ns, backend);
    for jump in ["tollgate/nat-jump", "tollgate/fence-jump"] {
        assert_eq!(
            installed.matches(jump).count(),
            2,
            "{jump} once per family:\n{installed}"
        );
    }
    for foreign in [
        "-d 198.51.100.7/32 -p tcp -j ACCEPT",
        "-d 2001:db8:ffff::7/128 -j OTHER",
    ] {
        assert!(installed.contains(foreign), "{foreign} kept:\n{installed}");
    }

    // Idempotent: a second install leaves exactly the same tables.
    ns.init_ok(&args);
    assert_eq!(
        saves(&ns, backend),
        installed,
        "a second install changed the tables"
    );

    let verified = ns.init_ok(&["verify", "--backend", flag]);
    assert!(verified.stdout.contains("verified"), "{verified}");

    let removed = ns.init_ok(&["uninstall", "--backend", flag]);
    assert!(
        removed.stdout.contains("removed the IPv6 rules"),
        "{removed}"
    );
    assert_eq!(
        saves(&ns, backend),
        before,
        "uninstall must restore the tables exactly"
    );
    let again = ns.init_ok(&["uninstall", "--backend", flag]);
    assert!(again.stdout.contains("nothing to remove"), "{again}");
}

#[test]
fn lifecycle_nft() {
    if require_root() {
        lifecycle("nft", "auto");
    }
}

#[test]
fn lifecycle_legacy() {
    if require_root() {
        lifecycle("legacy", "legacy");
    }
}

#[test]
fn auto_joins_legacy_when_legacy_rules_exist() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    ns.ok(&[
        "iptables-legacy",
        "-w",
        "5",
        "-A",
        "OUTPUT",
        "-d",
        "198.51.100.9",
        "-j",
        "ACCEPT",
    ]);
    let r = ns.init_ok(&[]);
    assert!(
        r.stdout
            .contains("backend legacy (auto: 1 legacy rule(s) already present)"),
        "{r}"
    );
    assert!(ns.save("iptables-legacy-save").contains("TOLLGATE_OUTPUT"));
    assert!(ns.save("ip6tables-legacy-save").contains("TOLLGATE_FENCE"));
    assert!(!ns.save("iptables-nft-save").contains("TOLLGATE"));
    // uninstall (auto) finds them in the legacy tables.
    ns.init_ok(&["uninstall"]);
    assert!(!ns.save("iptables-legacy-save").contains("TOLLGATE"));
}

#[test]
fn dry_run_prints_and_applies_nothing() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let all = |ns: &Netns| {
        [
            "iptables-nft-save",
            "ip6tables-nft-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ]
        .map(|t| normalise(&ns.save(t)))
        .join("\n")
    };
    let before = all(&ns);
    let r = ns.init_ok(&["--dry-run"]);
    for want in [
        "nothing is applied",
        "*nat",
        "-I OUTPUT 1",
        "REDIRECT --to-ports 15443",
        "# IPv6",
        "icmp6-adm-prohibited",
    ] {
        assert!(r.stdout.contains(want), "{want}: {r}");
    }
    assert_eq!(all(&ns), before, "--dry-run changed the rules");

    // Over an installed set, the dry run shows the replacement of the existing jumps.
    ns.init_ok(&["--self-test", "off"]);
    let installed = all(&ns);
    let r = ns.init_ok(&["--dry-run"]);
    assert!(r.stdout.contains("-D OUTPUT 1\n-I OUTPUT 1"), "{r}");
    let u = ns.init_ok(&["uninstall", "--dry-run"]);
    assert!(u.stdout.contains("-X TOLLGATE_FENCE"), "{u}");
    assert_eq!(all(&ns), installed, "uninstall --dry-run changed the rules");
}

#[test]
fn verify_names_each_failure_with_its_exit_code() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let verify = ["verify"];
    // Nothing installed: the first probe fails.
    assert_eq!(ns.init(&verify).code, 21, "{}", ns.init(&verify));

    let cases: &[(&[&str], i32)] = &[
        // Someone else's ACCEPT ahead of our jump: 443 escapes capture (and the fence resets it).
        (
            &[
                "iptables", "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "--dport", "443", "-j",
                "ACCEPT",
            ],
            21,
        ),
        (
            &[
                "iptables",
                "-t",
                "nat",
                "-I",
                "TOLLGATE_REDIRECT",
                "1",
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "RETURN",
            ],
            23,
        ),
        (
            &[
                "iptables",
                "-I",
                "TOLLGATE_FENCE",
                "1",
                "-p",
                "udp",
                "-j",
                "RETURN",
            ],
            25,
        ),
        // Unreachable (after the final REJECT): behaviour unchanged, only the rule check sees it.
        (
            &[
                "iptables",
                "-A",
                "TOLLGATE_FENCE",
                "-d",
                "198.51.100.9",
                "-j",
                "RETURN",
            ],
            26,
        ),
        (
            &[
                "ip6tables",
                "-I",
                "TOLLGATE_FENCE",
                "1",
                "-p",
                "udp",
                "-j",
                "RETURN",
            ],
            35,
        ),
        (
            &[
                "ip6tables",
                "-t",
                "nat",
                "-I",
                "TOLLGATE_REDIRECT",
                "1",
                "-p",
                "tcp",
                "--dport",
                "443",
                "-j",
                "RETURN",
            ],
            31,
        ),
        // DNS escapes the redirect: UDP/53 then meets the fence (27), TCP/53 the capture port.
        (
            &[
                "iptables",
                "-t",
                "nat",
                "-I",
                "TOLLGATE_OUTPUT",
                "1",
                "-p",
                "udp",
                "--dport",
                "53",
                "-j",
                "RETURN",
            ],
            27,
        ),
        (
            &[
                "ip6tables",
                "-t",
                "nat",
                "-I",
                "TOLLGATE_OUTPUT",
                "1",
                "-p",
                "tcp",
                "--dport",
                "53",
                "-j",
                "RETURN",
            ],
            37,
        ),
    ];
    for (tamper, code) in cases {
        ns.init_ok(&["--self-test", "off"]);
        ns.init_ok(&verify);
        ns.ok(tamper);
        let r = ns.init(&verify);
        assert_eq!(r.code, *code, "{tamper:?}: {r}");
        assert!(r.stdout.contains("FAIL"), "{r}");
    }

    // The proxy exemption: remove the UID rule (the only one by owner).
    ns.init_ok(&["--self-test", "off"]);
    ns.ok(&["iptables", "-t", "nat", "-D", "TOLLGATE_OUTPUT", "1"]);
    let r = ns.init(&verify);
    assert_eq!(r.code, 24, "{r}");
    assert!(r.stdout.contains("loop back"), "{r}");

    // And a re-install repairs all of it.
    ns.init_ok(&[]);
}

#[test]
fn verify_probes_a_running_proxy_live() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    ns.init_ok(&[]);
    // Stand-ins for the running proxy: the ports are taken, so verify cannot bind them.
    let any4 = std::net::Ipv4Addr::UNSPECIFIED;
    let any6 = std::net::Ipv6Addr::UNSPECIFIED;
    let _held = [
        ns.bind(sock(any4, 15443)),
        ns.bind(sock(any4, 15001)),
        ns.bind(sock(any4, 15053)),
        ns.bind(sock(any6, 15443)),
        ns.bind(sock(any6, 15001)),
        ns.bind(sock(any6, 15053)),
    ];
    let _held_udp = [
        ns.bind_udp(sock(any4, 15053)),
        ns.bind_udp(sock(any6, 15053)),
    ];
    let r = ns.init_ok(&["verify"]);
    assert_eq!(
        r.stdout.matches("accepted by the running listener").count(),
        6,
        "{r}"
    );
    assert_eq!(
        r.stdout.matches("a live UDP probe cannot tell").count(),
        2,
        "{r}"
    );
    assert!(r.stdout.contains("(uid 0); live probe"), "{r}");
}

#[test]
fn runs_with_only_the_init_container_capabilities() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    // What a Pod grants: root with CAP_NET_ADMIN and CAP_NET_RAW only.
    let r: crate::netns::Run = ns
        .cmd("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all,+net_admin,+net_raw",
            "--",
        ])
        .arg(crate::netns::binary())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout
            .contains("as uid 0 (no CAP_SETUID/CAP_SETGID to switch): redirected to :15443"),
        "{r}"
    );
    assert!(
        r.stdout.contains("skip tcp 192.0.2.1:443 as the proxy"),
        "{r}"
    );
    assert!(r.stderr.contains("self-test check(s) skipped"), "{r}");
}

#[test]
fn refuses_without_privileges_or_binaries() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let r: crate::netns::Run = ns
        .cmd("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(crate::netns::binary())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 77, "{r}");
    assert!(
        r.stderr
            .contains("not root (euid 65534) and without CAP_NET_ADMIN"),
        "{r}"
    );

    let r: crate::netns::Run = ns
        .cmd("env")
        .arg("PATH=/nonexistent")
        .arg(crate::netns::binary())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 69, "{r}");
    assert!(r.stderr.contains("install the iptables package"), "{r}");
    assert!(!ns.save("iptables-nft-save").contains("TOLLGATE"));
}

#[test]
fn ipv6_failure_is_fatal_and_named() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    // A PATH where ip6tables-nft-restore always fails and everything else is real.
    let dir = tempfile::tempdir().unwrap();
    for tool in [
        "iptables-nft-save",
        "iptables-nft-restore",
        "ip6tables-nft-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ] {
        std::os::unix::fs::symlink("/usr/sbin/".to_string() + tool, dir.path().join(tool)).unwrap();
    }
    let fake = dir.path().join("ip6tables-nft-restore");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'ip6tables-restore: line 2 failed: simulated' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r: crate::netns::Run = ns
        .cmd("env")
        .arg(format!("PATH={}", dir.path().display()))
        .arg(crate::netns::binary())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 11, "{r}");
    assert!(
        r.stderr.contains("applying the IPv6 rules") && r.stderr.contains("simulated"),
        "{r}"
    );
}

#[test]
fn no_route_is_reported_as_skipped_not_passed() {
    if !require_root() {
        return;
    }
    let ns = Netns::bare();
    let r = ns.init_ok(&[]);
    assert_eq!(r.stdout.matches("skip").count(), 12, "{r}");
    assert!(
        r.stdout.contains("no route to 192.0.2.1:443 (ENETUNREACH"),
        "{r}"
    );
    assert!(
        r.stderr.contains("IPv4: 6 self-test check(s) skipped"),
        "{r}"
    );
}

#[test]
fn bad_arguments_exit_64_without_root() {
    for args in [
        &["--proxy-uid", "0"][..],
        &["--sni-port", "15001"],
        &["--no-such-flag"],
        &["verify", "--dry-run"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-init"))
            .args(args)
            .output()
            .unwrap();
        let r = crate::netns::Run::from(out);
        // verify --dry-run is refused before anything privileged is attempted.
        assert_eq!(r.code, 64, "{args:?}: {r}");
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-init"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
}
