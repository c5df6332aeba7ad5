//! The security model: the UID/GID exemption holds only while the agent cannot become the
//! proxy. A root process with CAP_SETUID, CAP_SETGID, CAP_NET_RAW and CAP_NET_ADMIN dropped and
//! no_new_privs (what the agent container gets) cannot escape by calling setgid/setuid(1337);
//! with CAP_SETUID kept, it can: the control case shows what an operator loses.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};

use crate::netns::{Netns, Run, V4_A, require_root, sock};

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
