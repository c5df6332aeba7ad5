//! DNS lookup latency (issue 9): one query at a time, over UDP on loopback, straight to the fake
//! upstream resolver vs through tollgate's DNS listener to the same resolver, interleaved in one
//! run so drift hits both alike. Also what the agent's resolver library pays for an allowed name
//! with Kubernetes' `ndots:5` search path (three expansions answered locally, then the name), and
//! for a refused name (answered locally).
//!
//! `cargo build --release -p tollgate -p tollgate-bench --bin tollgate --bin tollgate-bench-dns`, then
//! `TOLLGATE_BIN=target/release/tollgate target/release/tollgate-bench-dns` (`--queries N`,
//! default 20000 per series). Without `$TOLLGATE_BIN` the test harness looks for a debug build.

use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tollgate_tests::fake_dns::FakeResolver;
use tollgate_tests::proxy::Proxy;

const SEARCH: [&str; 3] = ["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"];

#[tokio::main]
async fn main() -> Result<()> {
    let queries: usize = match std::env::args().skip_while(|a| a != "--queries").nth(1) {
        Some(n) => n.parse().context("--queries N")?,
        None => 20_000,
    };
    let upstream_udp = UdpSocket::bind("127.0.0.1:0")?;
    let upstream = upstream_udp.local_addr()?;
    let upstream_tcp = std::net::TcpListener::bind(upstream)?;
    let _resolver = FakeResolver::start(
        vec![upstream_udp],
        vec![upstream_tcp],
        &[("bench.example", "203.0.113.10")],
    )?;

    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[tunnel]\nallow = [\"bench.example\"]\n[dns]\nupstream = [\"{upstream}\"]\n\
             queries_per_second = 100000\nburst = 100000\n"
        ),
    )?;
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("search {}\noptions ndots:5\n", SEARCH.join(" ")),
    )?;
    let proxy = Proxy::builder()
        .policy(&policy)
        .arg("--dns-resolv-conf")
        .arg(&resolv)
        .env("RUST_LOG", "info")
        .start()
        .await?;
    let Some(&tollgate) = proxy.dns_addrs().first() else {
        bail!("tollgate logged no dns listener");
    };

    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut lookups = Lookups { client, id: 0 };
    // Warm-up: both paths, page cache, allocator, the proxy's first-use costs.
    for _ in 0..1000 {
        lookups.one(upstream, "bench.example")?;
        lookups.one(tollgate, "bench.example")?;
    }
    let (mut direct, mut through, mut search, mut refused) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..queries {
        direct.push(lookups.one(upstream, "bench.example")?);
        through.push(lookups.one(tollgate, "bench.example")?);
        let started = Instant::now();
        for domain in SEARCH {
            lookups.one(tollgate, &format!("bench.example.{domain}"))?;
        }
        lookups.one(tollgate, "bench.example")?;
        search.push(started.elapsed());
        refused.push(lookups.one(tollgate, &format!("x{i}.attacker.example"))?);
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(String::from)
        })
        .unwrap_or_default();
    println!(
        "{} queries per series, one at a time, UDP on loopback; {cpu}",
        queries
    );
    println!();
    println!("| series | p50 µs | p90 µs | p99 µs | mean µs |");
    println!("| --- | --- | --- | --- | --- |");
    for (label, samples) in [
        ("direct to the upstream", &mut direct),
        ("through tollgate (allowed name)", &mut through),
        (
            "through tollgate, ndots:5 search path + name (4 queries)",
            &mut search,
        ),
        (
            "through tollgate, refused name (local NXDOMAIN)",
            &mut refused,
        ),
    ] {
        let s = Stats::of(samples);
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s.p50, s.p90, s.p99, s.mean
        );
    }
    let (d, t) = (Stats::of(&mut direct), Stats::of(&mut through));
    println!();
    println!(
        "added by tollgate, allowed name: {:.0} µs at p50 ({:.2}× direct), {:.0} µs at p99",
        t.p50 - d.p50,
        t.p50 / d.p50,
        t.p99 - d.p99
    );
    Ok(())
}

struct Lookups {
    client: UdpSocket,
    id: u16,
}

impl Lookups {
    /// One A query to `server`; the time from send to the matching answer.
    fn one(&mut self, server: SocketAddr, name: &str) -> Result<Duration> {
        self.id = self.id.wrapping_add(1);
        let mut msg = Message::new(self.id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(
            Name::from_str(&format!("{name}."))?,
            RecordType::A,
        ));
        let bytes = msg.to_vec()?;
        let mut buf = [0u8; 1500];
        let started = Instant::now();
        self.client.send_to(&bytes, server)?;
        loop {
            let n = self.client.recv(&mut buf).context("no answer within 2 s")?;
            let answer = Message::from_vec(&buf[..n])?;
            if answer.metadata.id == self.id {
                let code = answer.metadata.response_code;
                if !matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) {
                    bail!("{name}: {code}");
                }
                return Ok(started.elapsed());
            }
        }
    }
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Stats {
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| us(samples[((samples.len() - 1) as f64 * q) as usize]);
        let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len().max(1) as f64;
        Stats {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            mean,
        }
    }
}
