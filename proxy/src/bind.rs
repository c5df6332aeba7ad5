//! Binding the listeners, and waiting out a port that someone else holds.
//!
//! The agent shares the Pod's network namespace: while tollgate is down (a crash, an OOM kill) it
//! can bind tollgate's ports itself. Exiting on `EADDRINUSE` would turn that into a crash loop
//! with the agent answering on tollgate's ports for good, so a port in use is retried with
//! capped exponential backoff, naming the holder (UID, and pid when `/proc` shows it) in the log,
//! while `/readyz` stays not ready. Any other bind error is a configuration error (exit 64).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// First wait after a port was found in use.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts (a freed port is taken within this long).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Binds a listener; IPv6 sockets are v6-only so `0.0.0.0` and `[::]` can share a port.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// What became of one address.
pub enum Bound<T = TcpListener> {
    /// Listening.
    Listener(T),
    /// A v6 address on a kernel without IPv6 (there is no v6 traffic to capture either).
    NoIpv6,
    /// Shutdown came first.
    Stopped,
}

/// Binds `addr` with `bind`, retrying for as long as another socket holds it (until `shutdown`);
/// any other error is returned at once. `listener` names it in logs and in
/// `tollgate_listener_bound`. (`bind` is a parameter: the DNS listener binds UDP and TCP together.)
pub async fn bind_retrying_with<T>(
    addr: SocketAddr,
    listener: &'static str,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    bind: impl Fn(SocketAddr) -> std::io::Result<T>,
) -> std::io::Result<Bound<T>> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts: u64 = 0;
    loop {
        match bind(addr) {
            Ok(socket) => {
                metrics
                    .bounds
                    .listener_bound
                    .with_label_values(&[listener])
                    .set(1);
                if attempts > 0 {
                    tracing::info!(listener, %addr, attempts, "port freed; bound it");
                }
                return Ok(Bound::Listener(socket));
            }
            Err(e)
                if addr.is_ipv6()
                    && e.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32) =>
            {
                tracing::warn!(%addr, "IPv6 is not available; not listening on it");
                return Ok(Bound::NoIpv6);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                metrics
                    .bounds
                    .listener_bound
                    .with_label_values(&[listener])
                    .set(0);
                metrics
                    .bounds
                    .bind_retries
                    .with_label_values(&[listener])
                    .inc();
                attempts += 1;
                // The first attempt, then every 15th (~30 s at the cap): a squatter that stays
                // cannot flood the log.
                if attempts == 1 || attempts.is_multiple_of(15) {
                    let holders = holders(addr.port());
                    let holder = describe(&holders);
                    tracing::error!(
                        listener,
                        %addr,
                        holder = %holder,
                        attempts,
                        retry_in_ms = backoff.as_millis() as u64,
                        "port in use by another socket; not ready until it is freed"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(Bound::Stopped),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A socket listening on a port, as `/proc/net/tcp{,6}` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The owner's UID.
    pub uid: u32,
    /// The socket inode.
    pub inode: u64,
    /// The process holding it, when its `/proc/<pid>/fd` is readable to us.
    pub pid: Option<u32>,
    /// That process's `comm`.
    pub comm: Option<String>,
}

/// Every listening socket on `port` in this network namespace.
pub fn holders(port: u16) -> Vec<Holder> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            found.extend(listening_on(&text, port));
        }
    }
    for holder in &mut found {
        if let Some(pid) = pid_of_inode(holder.inode) {
            holder.pid = Some(pid);
            holder.comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim().to_owned());
        }
    }
    found
}

/// Parses a `/proc/net/tcp` table: rows in state LISTEN (`0A`) whose local port is `port`.
fn listening_on(table: &str, port: u16) -> Vec<Holder> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let state = cols.get(3)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            if *state != "0A" || u16::from_str_radix(hex_port, 16).ok()? != port {
                return None;
            }
            Some(Holder {
                uid: cols.get(7)?.parse().ok()?,
                inode: cols.get(9)?.parse().ok()?,
                pid: None,
                comm: None,
            })
        })
        .collect()
}

/// Finds the process with `socket:[inode]` open; only processes whose fds we may read.
fn pid_of_inode(inode: u64) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// One log field for the holders: `uid=65534 pid=42 comm=python3; ...` or `unknown`.
fn describe(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "unknown (not in /proc/net/tcp: another network namespace, or just released)"
            .to_owned();
    }
    holders
        .iter()
        .map(|h| {
            let mut s = format!("uid={} inode={}", h.uid, h.inode);
            match (h.pid, &h.comm) {
                (Some(pid), Some(comm)) => s.push_str(&format!(" pid={pid} comm={comm}")),
                (Some(pid), None) => s.push_str(&format!(" pid={pid}")),
                _ => s.push_str(" pid=unknown"),
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3AFA 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3AFA 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 99 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn finds_only_listening_rows_on_the_port() {
        let found = listening_on(TABLE, 0x3AFA);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].uid, found[0].inode), (65534, 4242));
        assert_eq!(listening_on(TABLE, 8080)[0].uid, 1337);
        assert!(listening_on(TABLE, 1).is_empty());
        assert!(listening_on("garbage\nmore garbage here", 1).is_empty());
    }

    #[test]
    fn describes_holders() {
        assert!(describe(&[]).starts_with("unknown"));
        let h = Holder {
            uid: 65534,
            inode: 7,
            pid: Some(42),
            comm: Some("perl".into()),
        };
        assert_eq!(describe(&[h]), "uid=65534 inode=7 pid=42 comm=perl");
    }
}
