//! The workspace's one network-namespace harness (`tollgate_tests::netns`: names, veth pair,
//! cleanup, the skip rule) with what these tests add: commands that panic with their output,
//! `tollgate-init` runnable by any UID, and `iptables-save` normalised for comparison. Each
//! [`Netns`] has `lo` up and, unless bare, the harness's veth pair: `tg0` holds 192.0.2.1/24 and
//! 2001:db8::1/64, `tg1` (= [`VETH_B`]) the `.2`s. Dropping it deletes the namespace, also when
//! the test panics.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tollgate_tests::netns::{Netns as Shared, in_netns};
pub use tollgate_tests::netns::{V4_A, V4_B, V6_B, require_root, sock};

/// The veth end holding the `.2` addresses.
pub const VETH_B: &str = "tg1";

/// The finished run of a command: exit code and output, printable for assertion messages.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `tollgate-init`, copied into a 0755 directory so that children running as other UIDs (and
/// setpriv'd ones) can execute it wherever the build directory is. The directory is
/// `$TMPDIR/tollgate-init-e2e-<pid>`; those of dead test processes are removed first.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dead = name
                .strip_prefix("tollgate-init-e2e-")
                .is_some_and(|pid| !Path::new("/proc").join(pid).exists());
            if dead {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("tollgate-init-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        copy_for_everyone(Path::new(env!("CARGO_BIN_EXE_tollgate-init")), &dir)
    })
}

/// Copies `file` into `dir`, both made 0755 (readable and executable by every UID).
///
/// `cp` does the copy: a write descriptor opened in this process could be inherited by a child
/// another test thread forks at that moment, and exec'ing the copy would then fail with ETXTBSY.
pub fn copy_for_everyone(file: &Path, dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(file.file_name().unwrap());
    let cp = Command::new("cp").arg(file).arg(&path).output().unwrap();
    assert!(
        cp.status.success(),
        "cp {}: {}",
        file.display(),
        Run::from(cp)
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A network namespace owned by one test.
pub struct Netns {
    inner: Shared,
}

impl Netns {
    /// A namespace with `lo` up and the veth pair.
    pub fn new() -> Netns {
        let ns = Netns::bare();
        let veth = ns.inner.veth().unwrap();
        assert_eq!(veth.b, VETH_B);
        ns
    }

    /// A namespace with only `lo` up: no route to any TEST-NET address.
    pub fn bare() -> Netns {
        Netns {
            inner: Shared::new().unwrap(),
        }
    }

    /// `ip netns exec <ns> <program>`, to add arguments to.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.inner.name()]).arg(program);
        c
    }

    /// Runs `argv` in the namespace.
    pub fn run(&self, argv: &[&str]) -> Run {
        self.cmd(argv[0]).args(&argv[1..]).output().unwrap().into()
    }

    /// Runs `argv` in the namespace and asserts it succeeded.
    pub fn ok(&self, argv: &[&str]) -> String {
        let r = self.run(argv);
        assert_eq!(r.code, 0, "{argv:?}: {r}");
        r.stdout
    }

    /// Runs `tollgate-init <args>` in the namespace.
    pub fn init(&self, args: &[&str]) -> Run {
        self.cmd(binary()).args(args).output().unwrap().into()
    }

    /// Runs `tollgate-init <args>` and asserts exit 0.
    pub fn init_ok(&self, args: &[&str]) -> Run {
        let r = self.init(args);
        assert_eq!(r.code, 0, "tollgate-init {args:?}: {r}");
        r
    }

    /// The `iptables-save`-style dump of one tool (e.g. `ip6tables-legacy-save`).
    pub fn save(&self, tool: &str) -> String {
        self.ok(&[tool])
    }

    /// A listener on `addr`, created inside the namespace (the socket keeps it).
    pub fn bind(&self, addr: SocketAddr) -> TcpListener {
        let sock = self.bound_socket(addr, socket2::Type::STREAM);
        sock.listen(64).unwrap();
        TcpListener::from(sock)
    }

    /// A UDP socket bound to `addr` inside the namespace (v6-only for IPv6).
    pub fn bind_udp(&self, addr: SocketAddr) -> std::net::UdpSocket {
        std::net::UdpSocket::from(self.bound_socket(addr, socket2::Type::DGRAM))
    }

    /// A socket of type `ty` bound to `addr` inside the namespace (v6-only for IPv6;
    /// SO_REUSEADDR for TCP).
    fn bound_socket(&self, addr: SocketAddr, ty: socket2::Type) -> socket2::Socket {
        in_netns(self.inner.path(), move || {
            let sock = socket2::Socket::new(socket2::Domain::for_address(addr), ty, None)?;
            if addr.is_ipv6() {
                sock.set_only_v6(true)?;
            }
            if ty == socket2::Type::STREAM {
                sock.set_reuse_address(true)?;
            }
            sock.bind(&addr.into())?;
            Ok(sock)
        })
        .unwrap()
    }
}

/// `iptables-save` output reduced to what a change of rules would change: no comments, no
/// counters, no declarations of empty built-in chains with an ACCEPT policy and no tables left
/// empty by that. (iptables-nft creates a table's built-in chains on first use and nothing
/// deletes them; an empty ACCEPT base chain changes no packet's fate.)
pub fn normalise(save: &str) -> String {
    let mut out = Vec::new();
    let mut table: Vec<String> = Vec::new();
    for line in save.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('*') {
            table = vec![line.to_string()];
        } else if line == "COMMIT" {
            if table.len() > 1 {
                out.append(&mut table);
                out.push("COMMIT".into());
            }
            table.clear();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let (name, policy) = (w.next().unwrap_or_default(), w.next().unwrap_or_default());
            let used = save.lines().any(|l| l.starts_with(&format!("-A {name} ")));
            if policy != "ACCEPT" || used {
                table.push(format!(":{name} {policy}"));
            }
        } else {
            table.push(line.to_string());
        }
    }
    out.join("\n")
}
