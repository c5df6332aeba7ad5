//! Idle tunnels (issue 13): what an open tunnel that carries nothing costs in memory, through
//! tollgate and through HAProxy routing the same SNI, measured one proxy at a time in one run.
//!
//! For each target: start it, read its RSS, open N connections that each send one real
//! ClientHello (SNI `bench.test`, made by rustls) and then stay silent, wait until the origin
//! holds N upstream connections (every tunnel is routed and dialled), read the RSS again, then
//! close them all. KiB per idle tunnel = (RSS with N − RSS before) ÷ N.
//!
//! The origin is a child process (this binary with `--origin-child`): a plain TCP server that
//! accepts, reads and discards. Splitting clients and origin keeps each process well under the
//! open-file limit (N client sockets here, N upstream sockets there, 2N in the proxy).
//!
//! `cargo build --release -p tollgate -p tollgate-bench && target/release/tollgate-bench-idle`

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep};
use tollgate_bench::pki::{self, Pki};
use tollgate_bench::proc;
use tollgate_bench::report::median;
use tollgate_bench::target::{self, HaproxySettings, Kind, Target};

/// Memory per idle tunnel: tollgate vs HAProxy (same SNI route), N tunnels each, one run.
#[derive(Debug, Parser)]
#[command(name = "tollgate-bench-idle")]
struct Cli {
    /// Idle tunnels per target. The proxy holds 2 descriptors per tunnel and the open-file
    /// limit bounds it (about 9,000 with a limit of 20,000).
    #[arg(long, default_value_t = 9000)]
    tunnels: usize,
    /// Rounds; each target is started fresh each round and the median reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Targets, comma-separated: tollgate, haproxy, haproxy-1t, candidate (`candidate` runs
    /// when --candidate-bin is given).
    #[arg(long, value_delimiter = ',', default_values = ["tollgate", "haproxy", "haproxy-1t"])]
    targets: Vec<String>,
    /// The tollgate binary (default: `tollgate` next to this executable, i.e. target/release).
    #[arg(long, env = "TOLLGATE_BIN")]
    tollgate_bin: Option<PathBuf>,
    /// The HAProxy binary (default: `haproxy` on PATH; skipped when there is none).
    #[arg(long)]
    haproxy_bin: Option<PathBuf>,
    /// Another tollgate build (or a wrapper script), measured as target `candidate`.
    #[arg(long)]
    candidate_bin: Option<PathBuf>,
    /// Internal: run as the origin (prints its address, then accepts and discards).
    #[arg(long, hide = true)]
    origin_child: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if cli.origin_child {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if cli.origin_child {
        runtime.block_on(origin_child())
    } else {
        runtime.block_on(run(cli))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The origin: prints its address, accepts and reads until each peer closes, and exits when
/// the parent closes its stdin (so it never outlives the benchmark).
async fn origin_child() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // EMFILE and the like: back off rather than spin.
            sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
}

/// The origin child process; killed on drop.
struct Origin {
    child: Child,
    addr: SocketAddr,
}

impl Origin {
    fn start() -> Result<Origin> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--origin-child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the origin child")?;
        let stdout = child.stdout.take().context("origin stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line.trim().parse().context("origin address")?;
        Ok(Origin { child, addr })
    }

    /// Open descriptors of the origin: its accepted connections, plus a constant few.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// Waits until [`Origin::open_fds`] satisfies `done`, up to `limit`.
    async fn wait_fds(&self, limit: Duration, done: impl Fn(usize) -> bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let fds = self.open_fds();
            if done(fds) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the origin holds {fds} descriptors after {limit:?}");
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One target's measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss_before_kib: u64,
    rss_open_kib: u64,
    rss_after_kib: u64,
    cpu_open: Duration,
}

impl Sample {
    fn kib_per_tunnel(&self, n: usize) -> f64 {
        self.rss_open_kib.saturating_sub(self.rss_before_kib) as f64 / n as f64
    }
}

async fn run(cli: Cli) -> Result<()> {
    let tollgate_bin = match &cli.tollgate_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("tollgate"),
    };
    if !tollgate_bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release -p tollgate`, or set TOLLGATE_BIN",
            tollgate_bin.display()
        );
    }
    let haproxy_bin = cli
        .haproxy_bin
        .clone()
        .or_else(|| target::find_on_path("haproxy"));
    let mut kinds: Vec<Kind> = cli
        .targets
        .iter()
        .map(|t| Kind::parse(t).ok_or_else(|| anyhow!("unknown target {t:?}")))
        .collect::<Result<_>>()?;
    if cli.candidate_bin.is_some() && !kinds.contains(&Kind::Candidate) {
        kinds.insert(1.min(kinds.len()), Kind::Candidate);
    }
    kinds.retain(|k| match k {
        Kind::Haproxy | Kind::Haproxy1T | Kind::Haproxy1TLog => haproxy_bin.is_some(),
        Kind::Candidate => cli.candidate_bin.is_some(),
        Kind::Direct | Kind::TollgateNoLog | Kind::Tollgate1T => false,
        Kind::Tollgate => true,
    });
    let hello = client_hello()?;
    let origin = Origin::start()?;
    let load_before = proc::load_average();
    let mut samples: Vec<(Kind, Vec<Sample>)> = kinds.iter().map(|k| (*k, Vec::new())).collect();
    for round in 0..cli.rounds {
        for (kind, list) in &mut samples {
            let bin = match kind {
                Kind::Candidate => cli.candidate_bin.as_deref(),
                Kind::Haproxy | Kind::Haproxy1T | Kind::Haproxy1TLog => haproxy_bin.as_deref(),
                _ => Some(tollgate_bin.as_path()),
            };
            let Some(bin) = bin else { continue };
            let target = start(*kind, bin, origin.addr, cli.tunnels).await?;
            let sample = measure(&target, &origin, &hello, cli.tunnels, cli.concurrency)
                .await
                .with_context(|| format!("measuring {}", kind.name()))?;
            eprintln!(
                "round {}: {:<10} {:.2} KiB per idle tunnel (RSS {} → {} KiB, {} KiB after close)",
                round + 1,
                kind.name(),
                sample.kib_per_tunnel(cli.tunnels),
                sample.rss_before_kib,
                sample.rss_open_kib,
                sample.rss_after_kib,
            );
            list.push(sample);
        }
    }
    print_report(
        &cli,
        &samples,
        &tollgate_bin,
        haproxy_bin.as_deref(),
        &load_before,
    );
    Ok(())
}

/// Starts `kind` routing `bench.test` to `origin`, with room for `n` connections.
async fn start(kind: Kind, bin: &Path, origin: SocketAddr, n: usize) -> Result<Target> {
    let room = (n + 64) as u32;
    match kind {
        Kind::Haproxy | Kind::Haproxy1T | Kind::Haproxy1TLog => {
            let settings = HaproxySettings {
                nbthread: 2,
                splice: false,
                maxconn: room,
                log: false,
            };
            Target::haproxy(bin, origin, settings, kind).await
        }
        _ => {
            let extra = ["--max-connections".to_owned(), room.to_string()];
            Target::tollgate_with_args(bin, origin, kind, &extra).await
        }
    }
}

async fn measure(
    target: &Target,
    origin: &Origin,
    hello: &[u8],
    n: usize,
    concurrency: usize,
) -> Result<Sample> {
    let pid = target.pid().context("a proxy has a pid")?;
    sleep(Duration::from_millis(500)).await;
    let base_fds = origin.open_fds();
    let rss_before_kib = rss_kib(pid)?;
    let cpu_before = proc::process_cpu(pid).unwrap_or_default();
    let streams = open_idle(target.addr, hello, n, concurrency).await?;
    origin
        .wait_fds(Duration::from_secs(60), |fds| fds >= base_fds + n)
        .await
        .context("waiting for every tunnel to reach the origin")?;
    // Let the proxy finish whatever follows the dial (the replay, registrations).
    sleep(Duration::from_secs(1)).await;
    let rss_open_kib = rss_kib(pid)?;
    let cpu_open = proc::process_cpu(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    drop(streams);
    origin
        .wait_fds(Duration::from_secs(60), |fds| fds <= base_fds)
        .await
        .context("waiting for the tunnels to close")?;
    sleep(Duration::from_millis(500)).await;
    let rss_after_kib = rss_kib(pid)?;
    Ok(Sample {
        rss_before_kib,
        rss_open_kib,
        rss_after_kib,
        cpu_open,
    })
}

/// Opens `n` connections to `addr`, each sending `hello` and then nothing, `concurrency` at once.
async fn open_idle(
    addr: SocketAddr,
    hello: &[u8],
    n: usize,
    concurrency: usize,
) -> Result<Vec<TcpStream>> {
    let workers = concurrency.clamp(1, n.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let count = n / workers + usize::from(w < n % workers);
        let hello = hello.to_vec();
        tasks.spawn(async move {
            let mut streams = Vec::with_capacity(count);
            for _ in 0..count {
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(&hello).await?;
                streams.push(stream);
            }
            anyhow::Ok(streams)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}

/// A real ClientHello for `bench.test`, as rustls sends it.
fn client_hello() -> Result<Vec<u8>> {
    let pki = Pki::generate()?;
    let mut conn = rustls::ClientConnection::new(pki.client.clone(), pki::server_name())?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/<pid>/status")
}

fn print_report(
    cli: &Cli,
    samples: &[(Kind, Vec<Sample>)],
    tollgate_bin: &Path,
    haproxy_bin: Option<&Path>,
    load_before: &str,
) {
    let n = cli.tunnels;
    let machine = proc::Machine::read();
    println!(
        "Idle tunnels: {n} per target, {} round(s). Machine: {} cores, {}, {}, Linux {}. \
         Load average before: {load_before}, after: {}.",
        cli.rounds,
        machine.cores,
        machine.cpu_model,
        machine.memory,
        machine.kernel,
        proc::load_average(),
    );
    println!(
        "tollgate: {}; haproxy: {}\n",
        target::version(tollgate_bin, "--version"),
        haproxy_bin.map_or_else(|| "none".to_owned(), |b| target::version(b, "-v")),
    );
    let per = |kind: Kind| {
        samples
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, s)| median(s.iter().map(|s| s.kib_per_tunnel(n))))
    };
    let best_haproxy = [Kind::Haproxy, Kind::Haproxy1T]
        .into_iter()
        .filter_map(per)
        .reduce(f64::min);
    println!(
        "| target | RSS before | RSS with {n} idle tunnels | RSS after closing | KiB per idle tunnel | \
         ÷ best HAProxy | CPU µs per tunnel opened |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (kind, list) in samples {
        let med = |f: &dyn Fn(&Sample) -> f64| median(list.iter().map(f)).unwrap_or(f64::NAN);
        let kib = med(&|s| s.kib_per_tunnel(n));
        let ratio =
            best_haproxy.map_or_else(|| "–".to_owned(), |b| format!("{:.2}", kib / b.max(0.01)));
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {kib:.2} | {ratio} | {:.0} |",
            kind.name(),
            med(&|s| s.rss_before_kib as f64) / 1024.0,
            med(&|s| s.rss_open_kib as f64) / 1024.0,
            med(&|s| s.rss_after_kib as f64) / 1024.0,
            med(&|s| s.cpu_open.as_secs_f64() * 1e6 / n as f64),
        );
    }
}
