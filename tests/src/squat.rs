//! Another process holding a TCP port, as an agent would squat one of tollgate's ports while
//! tollgate is down: `perl` (in every Debian base image) listening on `127.0.0.1`, optionally as
//! another UID, answering every connection `200 ready` (a forged `/readyz`). Killed on drop.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

const SCRIPT: &str = r#"
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0],
                              Listen => 64, ReuseAddr => 1) or die "bind: $!";
$| = 1;
print $s->sockport, "\n";
while (my $c = $s->accept) {
    my $line = <$c>;
    print $c "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nready\n";
    close $c;
}
"#;

/// A process listening on a port.
pub struct PortHolder {
    child: Child,
    /// The port it holds.
    pub port: u16,
}

impl PortHolder {
    /// Holds `port` (0: any free port) on `127.0.0.1`, as `uid` when given (needs root).
    pub fn spawn(port: u16, uid: Option<u32>) -> Result<PortHolder> {
        let mut cmd = Command::new("perl");
        cmd.arg("-e").arg(SCRIPT).arg(port.to_string());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("spawn perl (the port holder)")?;
        let stdout = child.stdout.take().context("stdout piped")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            bail!("the port holder did not print its port: {line:?}");
        };
        Ok(PortHolder { child, port })
    }

    /// The holder's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PortHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
