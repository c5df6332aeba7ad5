//! The sidecar itself (`tollgate` with no subcommand): the runtime, the policy, the decision
//! log and the probe key, then every port bound (admin first, squat-proof), then the server.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tollgate_policy::{DEFAULT_POLICY_TOML, Policy};

use super::{EXIT_CONFIG, RunArgs, evidence};
use crate::accept::Limits;
use crate::admin::{ReadOnlyLimits, Readiness};
use crate::bind::{self, Bound};
use crate::intercept::gateway::Capacity;
use crate::metrics::Metrics;
use crate::phase;
use crate::probe::ProbeKey;
use crate::server::{LoadedPolicy, Server, Settings, spawn_admin};

pub(super) fn run(args: RunArgs) -> ExitCode {
    super::init_logging(args.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        builder.worker_threads(args.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "tollgate cannot start");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let mut policy = load_policy(args.policy.as_deref())?;
    if let Some(dir) = &args.certs_dir {
        policy.policy.gateway.tls.output_dir = dir.clone();
    }
    let read_only = ReadOnlyLimits {
        max_connections: args.read_only_max_connections as usize,
        header_timeout: args.read_only_header_timeout,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let metrics = Metrics::new();
    let ready = Arc::new(Readiness::default());
    let recorder = open_evidence(&args, &policy, &metrics)?;
    let _receipt = recorder.clone().map(|recorder| evidence::ReceiptOnExit {
        recorder,
        termination_log: args.termination_log.clone(),
    });
    // A fresh key each start, before any port is bound: a squatter never sees one.
    let probe = probe_key(&args.probe_secret_file);

    // The admin port first, so that while any other port is still held by someone else,
    // `/readyz` is answered by tollgate itself: "not ready".
    let Some(admin) = bind_retrying(
        &[args.admin_listen],
        "admin",
        &metrics,
        &shutdown,
        bind::bind,
    )
    .await?
    else {
        return Ok(());
    };
    let admin_stop = CancellationToken::new();
    let admin_ports = serve_admin(
        admin,
        &metrics,
        &ready,
        probe,
        recorder.clone(),
        read_only,
        &admin_stop,
    );
    let _stop_admin = admin_stop.drop_guard();

    let gateway = !policy.policy.intercept.is_empty();
    let Some(ports) = bind_ports(&args, gateway, &metrics, &shutdown).await? else {
        return Ok(());
    };
    let resolv = crate::dns::ResolvConf::load(&args.dns_resolv_conf);
    let observe = args.observe;
    let settings = settings(args, read_only);
    let mut server = Server::new(ports.sni, ports.capture, None, settings, policy);
    server.metrics = metrics;
    server.ready = ready;
    server.other_own_ports = admin_ports;
    server.usage = ports.usage.into_iter().next();
    server.gateway = gateway;
    server.dns = ports.dns;
    server.resolv = resolv;
    server.evidence = recorder;
    server.observe = observe;
    server.run(shutdown).await?;
    Ok(())
}

/// Every listener but the admin port's.
struct Ports {
    sni: Vec<TcpListener>,
    capture: Vec<TcpListener>,
    usage: Vec<TcpListener>,
    dns: Vec<(UdpSocket, TcpListener)>,
}

/// Binds the SNI, capture, usage (only with a gateway) and DNS ports at once, each retried while
/// someone else holds it; `None` when shutdown came first.
async fn bind_ports(
    args: &RunArgs,
    gateway: bool,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Ports>> {
    let usage_addrs = if gateway {
        vec![args.usage_listen]
    } else {
        Vec::new()
    };
    let (sni, capture, usage, dns) = tokio::join!(
        bind_retrying(&args.listen, "sni", metrics, shutdown, bind::bind),
        bind_retrying(
            &args.capture_listen,
            "capture",
            metrics,
            shutdown,
            bind::bind
        ),
        bind_retrying(&usage_addrs, "usage", metrics, shutdown, bind::bind),
        bind_retrying(
            &args.dns_listen,
            "dns",
            metrics,
            shutdown,
            crate::dns::listener::bind
        ),
    );
    Ok(match (sni?, capture?, usage?, dns?) {
        (Some(sni), Some(capture), Some(usage), Some(dns)) => Some(Ports {
            sni,
            capture,
            usage,
            dns,
        }),
        _ => None,
    })
}

/// Opens the hash-chained decision log when there is a directory for it (flag or data dir).
fn open_evidence(
    args: &RunArgs,
    policy: &LoadedPolicy,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<evidence::Recorder>>> {
    let Some(dir) = evidence::dir(args.evidence_dir.as_deref(), &policy.policy) else {
        return Ok(None);
    };
    let ports: Vec<SocketAddr> = [
        &args.listen,
        &args.capture_listen,
        &args.dns_listen,
        &vec![args.usage_listen, args.admin_listen],
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    Ok(Some(evidence::open(
        &dir,
        &policy.policy,
        metrics,
        &ports,
        args.observe,
        args.evidence_max_bytes.0 as u64,
    )?))
}

/// Writes this start's probe key; without one `tollgate probe` reports not ready.
fn probe_key(path: &Path) -> Option<Arc<ProbeKey>> {
    match ProbeKey::generate(path) {
        Ok(key) => Some(Arc::new(key)),
        Err(error) => {
            tracing::warn!(
                %error,
                path = %path.display(),
                "cannot write the probe key; `tollgate probe` will report not ready"
            );
            None
        }
    }
}

/// Serves the admin port on each bound listener until `stop`; returns their ports.
fn serve_admin(
    admin: Vec<TcpListener>,
    metrics: &Metrics,
    ready: &Arc<Readiness>,
    probe: Option<Arc<ProbeKey>>,
    recorder: Option<Arc<evidence::Recorder>>,
    read_only: ReadOnlyLimits,
    stop: &CancellationToken,
) -> Vec<u16> {
    admin
        .into_iter()
        .filter_map(|listener| {
            let (probe, recorder) = (probe.clone(), recorder.clone());
            spawn_admin(listener, metrics, ready, probe, recorder, read_only, stop)
        })
        .collect()
}

/// The server's settings from the flags.
fn settings(args: RunArgs, read_only: ReadOnlyLimits) -> Settings {
    Settings {
        hello_timeout: args.hello_timeout,
        limits: Limits {
            max_connections: args.max_connections as usize,
            drain_timeout: args.drain_timeout,
        },
        phase_sources: phase::Sources {
            labels_file: args.labels_file,
            label_key: args.phase_label,
            unlock_file: args.unlock_file,
        },
        read_only,
        gateway: Capacity {
            body_budget: args.body_budget.0,
            max_connections: args.max_intercepted_connections as usize,
        },
    }
}

/// Loads the policy file (or the embedded default), with the sidecar's environment applied.
pub(crate) fn load_policy(path: Option<&Path>) -> anyhow::Result<LoadedPolicy> {
    let (mut policy, text) = match path {
        None => (
            Policy::embedded_default(),
            DEFAULT_POLICY_TOML.as_bytes().to_vec(),
        ),
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let utf8 = std::str::from_utf8(&text)
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            (Policy::parse(utf8, &path.display().to_string())?, text)
        }
    };
    // The Python sidecar's environment (MAX_COST_USD, ...) overrides the file, on every load.
    policy.apply_process_env()?;
    for warning in policy.warnings() {
        tracing::warn!(%warning, "policy");
    }
    Ok(LoadedPolicy {
        policy,
        path: path.map(Path::to_owned),
        text,
    })
}

/// Binds every address of one listener, each retried while another socket holds it (see
/// [`crate::bind`]); a v6 address on a kernel without IPv6 is skipped. `None` when shutdown came
/// first; an error (exit 64) for any other bind failure, or when nothing at all could be bound.
async fn bind_retrying<T>(
    addrs: &[SocketAddr],
    listener: &'static str,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    binder: impl Fn(SocketAddr) -> std::io::Result<T> + Copy,
) -> anyhow::Result<Option<Vec<T>>> {
    let mut listeners = Vec::new();
    for addr in addrs {
        let bound = bind::bind_retrying_with(*addr, listener, metrics, shutdown, binder)
            .await
            .with_context(|| format!("cannot listen on {addr} ({listener})"))?;
        match bound {
            Bound::Listener(socket) => listeners.push(socket),
            Bound::NoIpv6 => {}
            Bound::Stopped => return Ok(None),
        }
    }
    anyhow::ensure!(
        addrs.is_empty() || !listeners.is_empty(),
        "no listener could be bound for {addrs:?}"
    );
    Ok(Some(listeners))
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will not drain");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "shutting down: no new connections, draining open ones"
    );
    shutdown.cancel();
}
