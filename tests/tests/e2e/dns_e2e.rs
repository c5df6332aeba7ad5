//! tollgate answers the Pod's DNS, end to end (root only). Two namespaces: the Pod, where the
//! real `tollgate-init` installs its rules and the real `tollgate` runs as UID 1337, and the
//! world, where a fake cluster resolver (198.51.100.2, 2001:db8:1::2) records every query it
//! receives. The agent is `dig` and `getent` run as UID 65534 with the Pod's resolv.conf
//! (`ndots:5` and the Kubernetes search path). What these tests prove: allowed names resolve over
//! UDP and TCP, IPv4 and IPv6; a refused name gets NXDOMAIN and never reaches the resolver; a
//! query aimed at any other resolver address is still answered by tollgate; TXT is refused in
//! the agent phase; the phase flip opens names; garbage, oversized packets and a flood leave it
//! serving.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tollgate_tests::eventually;
use tollgate_tests::fake_dns::FakeResolver;
use tollgate_tests::netns::{Netns, WORLD_V4, WORLD_V6, sock};
use tollgate_tests::proxy::{Proxy, tollgate_bin};
use tollgate_tests::require_root;

const POLICY: &str = r#"version = 1
[tunnel]
allow = ["allowed.example"]
deny = ["denied.example"]
[dns]
allow = ["api.tools.svc.cluster.local"]
max_ttl = "30s"
"#;

const TABLE: &[(&str, &str)] = &[
    ("allowed.example", "203.0.113.10"),
    ("allowed.example", "2001:db8:a::10"),
    ("open.example", "203.0.113.20"),
    ("denied.example", "203.0.113.30"),
    ("api.tools.svc.cluster.local", "10.96.7.7"),
    ("later.example", "203.0.113.40"),
];

/// Where no resolver lives: only tollgate can answer a query sent there.
const NOWHERE: &str = "198.51.100.53";

/// `/etc/netns/<pod>/resolv.conf`, which `ip netns exec` mounts over /etc/resolv.conf (as
/// kubelet writes it into every container of a Pod); removed on drop.
struct ResolvConf(PathBuf);

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Pod {
    // Field order is drop order: the proxy dies before its namespace.
    proxy: Proxy,
    policy: PathBuf,
    resolver: FakeResolver,
    _resolv: ResolvConf,
    _dir: tempfile::TempDir,
    pod: Netns,
    _world: Netns,
}

impl Pod {
    async fn start() -> Pod {
        let pod = Netns::new().unwrap();
        let world = Netns::new().unwrap();
        pod.link_to(&world).unwrap();
        let resolver = FakeResolver::start(
            vec![
                world.bind_udp(sock(WORLD_V4, 53)).unwrap(),
                world.bind_udp(sock(WORLD_V6, 53)).unwrap(),
            ],
            vec![
                world.bind_tcp(sock(WORLD_V4, 53)).unwrap(),
                world.bind_tcp(sock(WORLD_V6, 53)).unwrap(),
            ],
            TABLE,
        )
        .unwrap();

        let etc = PathBuf::from("/etc/netns").join(pod.name());
        std::fs::create_dir_all(&etc).unwrap();
        let resolv = ResolvConf(etc.clone());
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {WORLD_V4}\nnameserver {WORLD_V6}\n\
                 search ns.svc.cluster.local svc.cluster.local cluster.local\n\
                 options ndots:5 timeout:2 attempts:1\n"
            ),
        )
        .unwrap();

        // The init container: install and self-test (the DNS redirect included).
        let init = tollgate_bin().with_file_name("tollgate-init");
        assert!(
            init.is_file(),
            "{} not found: run `cargo build -p tollgate-init` (cargo test --workspace builds it)",
            init.display()
        );
        let out = pod.command(init.to_str().unwrap()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("udp 192.0.2.1:53") && !text.contains("FAIL"),
            "tollgate-init failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Files UID 1337 reads.
        let dir = tempfile::Builder::new()
            .prefix("tollgate-dns-")
            .tempdir()
            .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let proxy = Proxy::builder()
            .netns(pod.name())
            .run_as(1337)
            .policy(&policy)
            .dns_listen("0.0.0.0:15053")
            .dns_listen("[::]:15053")
            .start()
            .await
            .unwrap();
        assert_eq!(proxy.dns_addrs().len(), 2, "{}", proxy.describe());
        Pod {
            proxy,
            policy,
            resolver,
            _resolv: resolv,
            _dir: dir,
            pod,
            _world: world,
        }
    }

    /// Runs `argv` in the Pod as the agent (UID 65534).
    fn agent(&self, argv: &[&str]) -> Output {
        self.pod
            .command("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .args(argv)
            .output()
            .unwrap()
    }

    /// `dig` as the agent: the status and the answer records (`name ttl class type data`).
    fn dig(&self, args: &[&str]) -> Dig {
        let mut argv = vec![
            "dig",
            "+time=3",
            "+tries=1",
            "+noall",
            "+comments",
            "+answer",
        ];
        argv.extend_from_slice(args);
        let out = self.agent(&argv);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .lines()
            .find_map(|l| l.split("status: ").nth(1))
            .map(|s| s.split(',').next().unwrap_or_default().to_string())
            .unwrap_or_else(|| {
                format!("no answer: {text}{}", String::from_utf8_lossy(&out.stderr))
            });
        let answers = text
            .lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect();
        Dig {
            status,
            answers,
            text,
        }
    }
}

#[derive(Debug)]
struct Dig {
    status: String,
    answers: Vec<Vec<String>>,
    text: String,
}

impl Dig {
    fn data(&self) -> Vec<&str> {
        self.answers
            .iter()
            .filter_map(|a| a.last().map(String::as_str))
            .collect()
    }
}

async fn dns_metric(p: &Pod, result: &str) -> f64 {
    p.proxy
        .metric("tollgate_dns_queries_total", &[("result", result)])
        .await
        .unwrap()
}

fn random_label() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{nanos:x}", std::process::id())
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_names_resolve_and_nothing_else_leaves_the_pod() {
    if !require_root() {
        return;
    }
    let p = Pod::start().await;

    // getent: the libc resolver with ndots:5 walks the search path first; tollgate answers the
    // expansions itself, so the resolver only ever sees the name.
    let out = p.agent(&["getent", "ahosts", "allowed.example"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("203.0.113.10") && text.contains("2001:db8:a::10"),
        "getent ahosts: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.agent(&["getent", "hosts", "allowed.example"]);
    assert!(out.status.success(), "getent hosts failed");
    assert!(!p.resolver.saw("cluster.local"), "{:?}", p.resolver.seen());
    // A cluster Service on [dns] allow, by its short name through the search path.
    let out = p.agent(&["getent", "hosts", "api.tools"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10.96.7.7"),
        "{out:?}"
    );

    // dig over UDP and TCP, to the IPv4 and the IPv6 resolver, A and AAAA; TTLs capped at 30 s.
    for (server, tcp, qtype, want) in [
        (WORLD_V4.to_string(), false, "A", "203.0.113.10"),
        (WORLD_V4.to_string(), true, "AAAA", "2001:db8:a::10"),
        (WORLD_V6.to_string(), false, "AAAA", "2001:db8:a::10"),
        (WORLD_V6.to_string(), true, "A", "203.0.113.10"),
    ] {
        let at = format!("@{server}");
        let mut args = vec![at.as_str(), "allowed.example", qtype];
        if tcp {
            args.push("+tcp");
        }
        let d = p.dig(&args);
        assert_eq!(d.status, "NOERROR", "{args:?}: {}", d.text);
        assert_eq!(d.data(), vec![want], "{args:?}: {}", d.text);
        let ttl: u32 = d.answers[0][1].parse().unwrap();
        assert!(ttl <= 30, "ttl {ttl} not capped: {}", d.text);
    }

    // A random name under a domain nobody allowed: NXDOMAIN, and the resolver saw nothing.
    let secret = format!("{}.attacker.example", random_label());
    for extra in [&[][..], &["+tcp"][..], &["TXT"][..]] {
        let mut args = vec![secret.as_str()];
        args.extend_from_slice(extra);
        let d = p.dig(&args);
        assert_eq!(d.status, "NXDOMAIN", "{args:?}: {}", d.text);
    }
    assert!(!p.resolver.saw("attacker"), "{:?}", p.resolver.seen());

    // Aimed at another resolver address (nothing lives there): still tollgate's answer.
    let at = format!("@{NOWHERE}");
    let d = p.dig(&[at.as_str(), "allowed.example", "A"]);
    assert_eq!(d.data(), vec!["203.0.113.10"], "{}", d.text);
    let d = p.dig(&[at.as_str(), &secret, "A", "+tcp"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);

    // TXT for an allowed name: NOTIMP in the agent phase; HTTPS: an empty answer. Neither asked.
    let d = p.dig(&["allowed.example", "TXT"]);
    assert_eq!(d.status, "NOTIMP", "{}", d.text);
    let d = p.dig(&["allowed.example", "HTTPS"]);
    assert_eq!(
        (d.status.as_str(), d.answers.len()),
        ("NOERROR", 0),
        "{}",
        d.text
    );
    let denied = p.dig(&["denied.example", "A"]);
    assert_eq!(denied.status, "NXDOMAIN", "{}", denied.text);
    let asked: Vec<String> = p.resolver.seen().iter().map(|s| s.qtype.clone()).collect();
    assert!(asked.iter().all(|t| t == "A" || t == "AAAA"), "{asked:?}");
    assert!(!p.resolver.saw("denied"), "{:?}", p.resolver.seen());

    assert!(dns_metric(&p, "forwarded").await >= 7.0);
    assert!(dns_metric(&p, "not-allow-listed").await >= 4.0);
    assert!(dns_metric(&p, "search-expansion").await >= 1.0);
    assert!(dns_metric(&p, "type-not-allowed").await >= 1.0);
    assert!(dns_metric(&p, "denied").await >= 1.0);
    let logged = p.proxy.json_lines().into_iter().any(|v| {
        v["message"] == "dns refused" && v["name"].as_str().is_some_and(|n| n.contains("attacker"))
    });
    assert!(logged, "{}", p.proxy.describe());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_and_the_phase_flip_open_names_but_not_denied_ones() {
    if !require_root() {
        return;
    }
    let p = Pod::start().await;
    // Hot reload: a name added to [dns] allow resolves without a restart.
    let d = p.dig(&["later.example", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    std::fs::write(
        &p.policy,
        POLICY.replace(
            r#"allow = ["api.tools.svc.cluster.local"]"#,
            r#"allow = ["api.tools.svc.cluster.local", "later.example"]"#,
        ),
    )
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "later.example to resolve",
        || async {
            let d = p.dig(&["later.example", "A"]);
            (d.data() == vec!["203.0.113.40"]).then_some(())
        },
    )
    .await
    .unwrap();

    // The phase flip: every name not denied.
    let d = p.dig(&["open.example", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert!(!p.resolver.saw("open.example"));

    std::fs::write(p.proxy.unlock_file(), "").unwrap();
    eventually(
        Duration::from_secs(5),
        "open.example to resolve",
        || async {
            let d = p.dig(&["open.example", "A"]);
            (d.data() == vec!["203.0.113.20"]).then_some(())
        },
    )
    .await
    .unwrap();
    let d = p.dig(&["denied.example", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert!(!p.resolver.saw("denied"), "{:?}", p.resolver.seen());
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_oversized_packets_and_a_flood_leave_it_serving() {
    if !require_root() {
        return;
    }
    let mut p = Pod::start().await;
    // Sockets made in the Pod by this (root, non-proxy) process are redirected like the agent's.
    let udp = p.pod.bind_udp("0.0.0.0:0".parse().unwrap()).unwrap();
    let to: SocketAddr = format!("{NOWHERE}:53").parse().unwrap();
    // Paced, so the kernel's receive buffer (not tollgate) does not drop them.
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 40 + 1)).map(|b| (b * 37 + i) as u8).collect();
        udp.send_to(&junk, to).unwrap();
        if i % 20 == 0 {
            udp.send_to(&[0x42; 1400], to).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // A flood of well-formed queries for random names: far over the rate limit.
    let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(b"\x05flood\x07example\x00\x00\x01\x00\x01");
    for _ in 0..3000 {
        let _ = udp.send_to(&query, to);
    }
    // TCP: an oversized frame, then garbage in a well-sized one.
    let mut tcp = p.pod.connect_tcp(to).unwrap();
    std::io::Write::write_all(&mut tcp, &[0xff, 0xff, 1, 2, 3]).unwrap();
    let mut tcp = p.pod.connect_tcp(to).unwrap();
    std::io::Write::write_all(&mut tcp, &[0, 5, 1, 2, 3, 4, 5]).unwrap();

    eventually(
        Duration::from_secs(5),
        "an allowed name to resolve",
        || async {
            let d = p.dig(&["allowed.example", "A"]);
            (d.data() == vec!["203.0.113.10"]).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(p.proxy.try_wait_alive(), "{}", p.proxy.describe());
    let malformed = dns_metric(&p, "malformed").await;
    let too_large = dns_metric(&p, "too-large").await;
    let limited = dns_metric(&p, "rate-limited").await;
    assert!(malformed >= 1.0, "malformed {malformed}");
    assert!(too_large >= 1.0, "too-large {too_large}");
    assert!(limited >= 1.0, "rate-limited {limited}");
    assert!(!p.resolver.saw("flood"), "{:?}", p.resolver.seen());
}
