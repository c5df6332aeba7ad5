//! Network namespaces for root-only end-to-end tests. Each [`Netns`] is a fresh `ip netns`
//! namespace (`tg-<pid>-<n>`) with `lo` up; [`Netns::veth`] adds TEST-NET addresses on a veth
//! pair whose both ends stay inside it. Sockets are made inside it from a short-lived thread
//! that `setns`es first (the socket keeps its namespace, so the test's tokio runtime can use it).
//! Dropping a `Netns` kills what runs in it and deletes it, also when the test panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use nix::sched::CloneFlags;

/// The veth end holding the `.1` addresses (where tests put the proxy).
pub const V4_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The veth end holding the `.2` addresses (where tests put the upstream).
pub const V4_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// IPv6 twin of [`V4_A`].
pub const V6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// IPv6 twin of [`V4_B`].
pub const V6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// The Pod's end of [`Netns::link_to`].
pub const POD_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The world's end of [`Netns::link_to`].
pub const WORLD_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// IPv6 twin of [`POD_V4`].
pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// IPv6 twin of [`WORLD_V4`].
pub const WORLD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static REAPED: std::sync::Once = std::sync::Once::new();

/// True when we are root, `ip netns` works and iptables is installed: the one skip rule of every
/// namespace test in the workspace (`tollgate-init`'s tests use this harness too). Otherwise:
/// with `TOLLGATE_REQUIRE_ROOT_TESTS=1` panics with the reason (so CI cannot skip silently), else
/// prints `SKIPPED` and returns false.
pub fn require_root() -> bool {
    let reason = if !nix::unistd::geteuid().is_root() {
        Some("not running as root".to_string())
    } else {
        match Command::new("ip").args(["netns", "list"]).output() {
            Ok(o) if o.status.success() => (which("iptables-nft-restore").is_none()
                && which("iptables-restore").is_none())
            .then(|| "iptables is not installed (apt-get install iptables)".to_string()),
            Ok(o) => Some(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run `ip` (install iproute2): {e}")),
        }
    };
    match reason {
        None => true,
        Some(why) if std::env::var("TOLLGATE_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") => {
            panic!("TOLLGATE_REQUIRE_ROOT_TESTS=1 but namespace tests cannot run: {why}")
        }
        Some(why) => {
            // Straight to stderr: the test harness captures eprintln!, and a skip must be seen.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIPPED (needs root, iproute2 and iptables): {why}\n").as_bytes(),
            );
            false
        }
    }
}

/// `name`'s path on `$PATH`, if it is there.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A network namespace owned by one test.
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

/// A veth pair inside a namespace: `a` carries 192.0.2.1/24 + 2001:db8::1/64, `b` the `.2`s.
#[derive(Clone, Debug)]
pub struct Veth {
    /// Interface name of the `.1` end.
    pub a: String,
    /// Interface name of the `.2` end.
    pub b: String,
}

impl Netns {
    /// Creates `tg-<pid>-<n>` with `lo` up (removing namespaces left by dead test processes).
    pub fn new() -> Result<Netns> {
        REAPED.call_once(reap_stale);
        let name = format!(
            "tg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`, the handle `setns` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Adds the veth pair with TEST-NET addresses (IPv6 with `nodad`, usable at once), both up.
    pub fn veth(&self) -> Result<Veth> {
        let (a, b) = ("tg0".to_string(), "tg1".to_string());
        self.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        for (dev, v4, v6) in [(&a, V4_A, V6_A), (&b, V4_B, V6_B)] {
            self.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            self.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            self.ip(&["link", "set", dev, "up"])?;
        }
        Ok(Veth { a, b })
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `argv` inside the namespace to completion; fails on a non-zero exit.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let (program, args) = argv.split_first().context("empty argv")?;
        run(self.command(program).args(args))
    }

    /// Starts `argv` inside the namespace; it is killed when the namespace is dropped.
    pub fn spawn(&self, argv: &[&str]) -> Result<u32> {
        let (program, args) = argv.split_first().context("empty argv")?;
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        Ok(pid)
    }

    /// A listener bound to `addr` inside the namespace.
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<TcpListener> {
        in_netns(self.path(), move || Ok(TcpListener::bind(addr)?))
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<std::net::UdpSocket> {
        in_netns(self.path(), move || Ok(std::net::UdpSocket::bind(addr)?))
    }

    /// A veth pair from this namespace (`tgp`, `.1` addresses) to `other` (`tgw`, `.2`
    /// addresses) on 198.51.100.0/24 and 2001:db8:1::/64, with default routes here through it:
    /// a Pod and the world outside it.
    pub fn link_to(&self, other: &Netns) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            "tgp",
            "type",
            "veth",
            "peer",
            "name",
            "tgw",
            "netns",
            &other.name,
        ])?;
        for (ns, dev, v4, v6) in [
            (self, "tgp", POD_V4, POD_V6),
            (other, "tgw", WORLD_V4, WORLD_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        self.ip(&["route", "add", "default", "dev", "tgp"])?;
        self.ip(&["-6", "route", "add", "default", "dev", "tgp"])?;
        Ok(())
    }

    /// A connection to `addr` made from inside the namespace.
    pub fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream> {
        connect_tcp_in(&self.name, addr)
    }

    /// A connection to `dst` made from inside the namespace with source address `src` (port
    /// chosen by the kernel), so that iptables rules can tell this "agent" from the proxy.
    pub fn connect_tcp_from(&self, src: IpAddr, dst: SocketAddr) -> Result<TcpStream> {
        in_netns(self.path(), move || {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(dst),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.bind(&SocketAddr::new(src, 0).into())?;
            socket.connect_timeout(&dst.into(), std::time::Duration::from_secs(5))?;
            Ok(socket.into())
        })
    }

    /// Like [`Netns::connect_tcp`], as a tokio stream.
    pub fn connect_tokio(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
        let s = self.connect_tcp(addr)?;
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        Ok(tokio::net::TcpStream::from_std(s)?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for mut child in self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        delete_namespace(&self.name);
    }
}

/// A connection to `addr` made from inside namespace `ns` (by name).
pub fn connect_tcp_in(ns: &str, addr: SocketAddr) -> Result<TcpStream> {
    let path = PathBuf::from("/var/run/netns").join(ns);
    in_netns(path, move || {
        Ok(TcpStream::connect_timeout(
            &addr,
            std::time::Duration::from_secs(5),
        )?)
    })
}

/// Runs `f` on a fresh thread that first joins the namespace at `path` (see [`Netns::path`]);
/// only that thread moves, and sockets it creates stay in the namespace after it ends.
pub fn in_netns<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

fn delete_namespace(name: &str) {
    // Anything still inside (e.g. a proxy a test leaked) would keep sockets alive: kill it.
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Deletes `tg-<pid>-<n>` namespaces whose test process no longer exists.
fn reap_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("tg-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !PathBuf::from("/proc").join(pid).exists() {
            delete_namespace(name);
        }
    }
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// `ip` and port as a socket address (handy for the TEST-NET constants).
pub fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}
