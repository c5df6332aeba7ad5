//! The security model: the UID/GID exemption holds only while the agent cannot become the
//! proxy. A root process with CAP_SETUID, CAP_SETGID, CAP_NET_RAW and CAP_NET_ADMIN dropped and
//! no_new_privs (what the agent container gets) cannot escape by calling setgid/setuid(1337);
//! with CAP_SETUID kept, it can: the control case shows what an operator loses.
//!
//! Only the UID is exempt: a process whose primary or supplementary group is the proxy's (an
//! image's `USER 1000:1337`, an `fsGroup`) is redirected and fenced like any other.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};

use crate::netns::{Netns, Run, V4_A, binary, require_root, sock};

const ESCAPE_ENV: &str = "TOLLGATE_INIT_ESCAPE";

/// Not a test on its own: the body of the child process `setuid_cannot_escape_the_redirect`
/// starts (under setpriv) in the namespace. Tries to become the proxy, then connects.
#[test]
#[ignore = "helper: run as a child process by setuid_cannot_escape_the_redirect"]
fn escape_attempt() {
    let Ok(spec) = std::env::var(ESCAPE_ENV) else {
        return;
    };
    let (dst, token) = spec.split_once(',').unwrap();
    let setgid = nix::unistd::setgid(Gid::from_raw(1337));
    let setuid = nix::unistd::setuid(Uid::from_raw(1337));
    println!(
        "ESCAPE setgid={setgid:?} setuid={setuid:?} uid={}",
        nix::unistd::getuid()
    );
    match TcpStream::connect_timeout(&dst.parse().unwrap(), Duration::from_secs(2)) {
        Ok(mut s) => {
            s.write_all(format!("{token}\n").as_bytes()).unwrap();
            println!("ESCAPE connect=ok");
        }
        Err(e) => println!("ESCAPE connect=err({e})"),
    }
    // The fence: UDP from anyone but the proxy fails at `send` (EPERM from the REJECT).
    let udp = UdpSocket::bind("0.0.0.0:0").and_then(|u| u.send_to(b"x", dst));
    match udp {
        Ok(_) => println!("ESCAPE udp=ok"),
        Err(e) => println!("ESCAPE udp=err({})", e.kind()),
    }
}

fn run_escape(ns: &Netns, setpriv: &[&str], token: &str) -> Run {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if setpriv.is_empty() {
        ns.cmd(&exe)
    } else {
        let mut c = ns.cmd("setpriv");
        c.args(setpriv).arg("--").arg(&exe);
        c
    };
    cmd.args([
        "--exact",
        "security::escape_attempt",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ESCAPE_ENV, format!("{},{token}", sock(V4_A, 443)));
    cmd.output().unwrap().into()
}

/// The connection that carried `token`, with its original destination, within `wait`.
fn arrival(listener: &TcpListener, token: &str, wait: Duration) -> Option<SocketAddr> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 128];
                let n = s.read(&mut buf).unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n]).trim() == token {
                    let o = getsockopt(&s, sockopt::OriginalDst).unwrap();
                    return Some(SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::from(u32::from_be(o.sin_addr.s_addr)),
                        u16::from_be(o.sin_port),
                    )));
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

#[test]
fn setuid_cannot_escape_the_redirect() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    ns.init_ok(&["--self-test", "off"]);
    let listener = ns.bind(sock(Ipv4Addr::UNSPECIFIED, 15443));

    // The agent container: capabilities dropped, no_new_privs.
    let dropped = [
        "--inh-caps=-all",
        "--bounding-set=-setuid,-setgid,-net_raw,-net_admin",
        "--no-new-privs",
    ];
    let r = run_escape(&ns, &dropped, "agent-token");
    assert!(
        r.stdout
            .contains("setgid=Err(EPERM) setuid=Err(EPERM) uid=0"),
        "{r}"
    );
    assert!(r.stdout.contains("ESCAPE connect=ok"), "{r}");
    assert_eq!(
        arrival(&listener, "agent-token", Duration::from_secs(3)),
        Some(sock(V4_A, 443)),
        "the connection must be redirected to the SNI port: {r}"
    );

    // Control: with CAP_SETUID/CAP_SETGID kept, the same process becomes 1337 and is exempt.
    let r = run_escape(&ns, &[], "escaped-token");
    assert!(
        r.stdout.contains("setgid=Ok(()) setuid=Ok(()) uid=1337"),
        "{r}"
    );
    assert!(
        r.stdout.contains("ESCAPE connect=err"),
        "not redirected, so 192.0.2.1:443 refuses: {r}"
    );
    assert_eq!(
        arrival(&listener, "escaped-token", Duration::from_millis(500)),
        None
    );
}

#[test]
fn the_proxy_group_is_not_exempt() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    ns.init_ok(&["--self-test", "off"]);
    let listener = ns.bind(sock(Ipv4Addr::UNSPECIFIED, 15443));

    // An agent image with `USER 1000:1337`, then one whose user is only a member of group 1337
    // (/etc/group, fsGroup, supplementalGroups): both must be captured and fenced.
    let cases: [(&str, &[&str]); 2] = [
        (
            "primary-gid",
            &["--reuid", "1000", "--regid", "1337", "--clear-groups"],
        ),
        (
            "supplementary-gid",
            &["--reuid", "1000", "--regid", "1000", "--groups", "1337"],
        ),
    ];
    for (token, ids) in cases {
        let mut setpriv = ids.to_vec();
        setpriv.push("--no-new-privs");
        let r = run_escape(&ns, &setpriv, token);
        assert!(
            r.stdout.contains("setuid=Err(EPERM) uid=1000"),
            "{token}: {r}"
        );
        assert!(r.stdout.contains("ESCAPE connect=ok"), "{token}: {r}");
        assert_eq!(
            arrival(&listener, token, Duration::from_secs(3)),
            Some(sock(V4_A, 443)),
            "{token}: group 1337 must not exempt the connection from the redirect: {r}"
        );
        assert!(
            r.stdout.contains("ESCAPE udp=err(permission denied)"),
            "{token}: group 1337 must not exempt UDP from the fence: {r}"
        );
    }
}

/// A Pod whose `fsGroup` or `supplementalGroups` is 1337 gives that group to every container,
/// tollgate-init's included: it is the one trace of the other containers' identities the init
/// container can see, and it refuses to install (so the Pod never starts).
#[test]
fn an_init_container_in_the_proxy_group_refuses_to_install() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let r: Run = ns
        .cmd("setpriv")
        .args(["--groups", "1337", "--"])
        .arg(binary())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 14, "{r}");
    assert!(r.stderr.contains("holds group 1337, the proxy's"), "{r}");
    assert!(
        !ns.save("iptables-save").contains("TOLLGATE"),
        "nothing installed: {r}"
    );
    // The same binary without the group installs.
    ns.init_ok(&["--self-test", "off"]);
}
