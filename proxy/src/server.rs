//! Assembles the stages into a running proxy: shared state, background watchers, admin endpoint
//! and the accept loops. Sockets are bound by the caller, so tests pass `127.0.0.1:0` listeners
//! and their own shutdown token (mini-redis's `run(listener, shutdown)`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tollgate_policy::Policy;

use crate::accept::{self, Limits};
use crate::admin::{self, ReadOnlyLimits, Readiness};
use crate::connection::{Context, Listener};
use crate::dns::{self, Dns, ResolvConf};
use crate::evidence::Recorder;
use crate::intercept::gateway::{Capacity, Gateway, Running, StartError};
use crate::intercept::{Interceptor, Unavailable, usage_api};
use crate::metrics::Metrics;
use crate::orig_dst::{Netfilter, OrigDst};
use crate::phase;
use crate::probe::ProbeKey;
use crate::reload;
use crate::tunnel::{Resolve, SystemResolver};

/// Settings that are fixed for the life of the process (the policy holds the rest).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Bound on the whole ClientHello read.
    pub hello_timeout: Duration,
    /// Connection limit and drain timeout.
    pub limits: Limits,
    /// Where the phase comes from.
    pub phase_sources: phase::Sources,
    /// Bounds on the read-only listeners (admin, usage), each.
    pub read_only: ReadOnlyLimits,
    /// What the LLM gateway may hold at once (body budget, intercepted connections).
    pub gateway: Capacity,
}

/// The policy the proxy starts with, and where later versions come from.
#[derive(Clone, Debug)]
pub struct LoadedPolicy {
    /// The compiled policy.
    pub policy: Policy,
    /// The watched file; `None` for the embedded default (nothing to reload).
    pub path: Option<PathBuf>,
    /// The text `policy` was compiled from, so an unchanged file is not reloaded.
    pub text: Vec<u8>,
}

/// A proxy ready to run: bound sockets plus its collaborators (real ones by default).
pub struct Server {
    /// SNI listeners (`:15443` on both families in production).
    pub listeners: Vec<TcpListener>,
    /// Original-destination (capture) listeners (`:15001` on both families in production).
    pub capture: Vec<TcpListener>,
    /// The admin listener (`:15090`), if any.
    pub admin: Option<TcpListener>,
    /// The usage listener (`:8080`), if any; served only when the gateway runs.
    pub usage: Option<TcpListener>,
    /// Start the LLM gateway for the policy's intercepted hosts (else they are refused).
    pub gateway: bool,
    /// Process-wide settings.
    pub settings: Settings,
    /// The starting policy.
    pub policy: LoadedPolicy,
    /// Resolver for tunnel hosts.
    pub resolver: Arc<dyn Resolve>,
    /// Original-destination lookup.
    pub orig_dst: Arc<dyn OrigDst>,
    /// Handler for intercepted hosts.
    pub interceptor: Arc<dyn Interceptor>,
    /// The metrics catalog (shared with the interceptor).
    pub metrics: Metrics,
    /// What `/readyz` reports; set here once every listener is served.
    pub ready: Arc<Readiness>,
    /// Ports tollgate serves outside this struct (an admin listener started by the caller),
    /// refused as capture destinations like the others.
    pub other_own_ports: Vec<u16>,
    /// DNS listeners, UDP and TCP on the same address (`:15053` on both families in production).
    pub dns: Vec<(UdpSocket, TcpListener)>,
    /// The proxy's resolv.conf: default upstream resolvers and search domains.
    pub resolv: ResolvConf,
    /// The hash-chained decision log (already opened, its start record written), if any.
    pub evidence: Option<Arc<Recorder>>,
    /// Observe mode for the agent phase (see `connection::Context::observe`).
    pub observe: bool,
}

impl Server {
    /// A server with the production collaborators: system resolver, netfilter, no interceptor.
    pub fn new(
        listeners: Vec<TcpListener>,
        capture: Vec<TcpListener>,
        admin: Option<TcpListener>,
        settings: Settings,
        policy: LoadedPolicy,
    ) -> Self {
        Self {
            listeners,
            capture,
            admin,
            usage: None,
            gateway: false,
            settings,
            policy,
            resolver: Arc::new(SystemResolver),
            orig_dst: Arc::new(Netfilter),
            interceptor: Arc::new(Unavailable),
            metrics: Metrics::new(),
            ready: Arc::new(Readiness::default()),
            other_own_ports: Vec::new(),
            dns: Vec::new(),
            resolv: ResolvConf::default(),
            evidence: None,
            observe: false,
        }
    }

    /// Runs until `shutdown` fires and every connection has drained (or been cut). Fails only
    /// at start, when the gateway cannot be built (a configuration error).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let started = self.start(&shutdown)?;
        accept::serve(started.listeners, started.ctx, started.limits, shutdown).await;
        started.ready.set(false);
        started.background.cancel();
        if let Some(running) = started.running {
            running.stop();
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Starts everything but the accept loops: the policy and phase watchers, the gateway, the
    /// admin and DNS listeners; then readiness turns on.
    fn start(self, shutdown: &CancellationToken) -> Result<Started, StartError> {
        let Server {
            listeners,
            capture,
            admin,
            usage,
            gateway,
            settings,
            policy,
            resolver,
            orig_dst,
            mut interceptor,
            metrics,
            ready,
            other_own_ports,
            dns,
            resolv,
            evidence,
            observe,
        } = self;
        let background = shutdown.child_token();
        let (current, phase_state) = start_policy(
            policy,
            &settings.phase_sources,
            &metrics,
            evidence.as_ref(),
            observe,
            &background,
        );

        // Every port tollgate listens on is refused as a captured destination (the usage port
        // too, served or not): a redirect back into the proxy would loop or reach its internals.
        let mut own_ports = other_own_ports;
        own_ports.extend(
            usage
                .iter()
                .filter_map(|l| Some(l.local_addr().ok()?.port())),
        );
        // The gateway writes the CA files before readiness can turn on.
        let mut running = None;
        if gateway && !current.load().intercept.is_empty() {
            let (built, bg) = start_gateway(
                &current,
                &metrics,
                &settings,
                usage,
                evidence.as_ref(),
                &background,
            )?;
            interceptor = built;
            running = Some(bg);
        }
        if let Some(admin_listener) = admin {
            let (probe, read_only) = (None, settings.read_only);
            own_ports.extend(spawn_admin(
                admin_listener,
                &metrics,
                &ready,
                probe,
                evidence.clone(),
                read_only,
                &background,
            ));
        }
        if !dns.is_empty() {
            let mut stage = Dns::new(
                current.clone(),
                phase_state.clone(),
                metrics.clone(),
                resolv,
            );
            (stage.observe, stage.evidence) = (observe, evidence.clone());
            own_ports.extend(spawn_dns(dns, &Arc::new(stage), &metrics, shutdown));
        }
        let listeners: Vec<(Listener, TcpListener)> = listeners
            .into_iter()
            .map(|l| (Listener::Sni, l))
            .chain(capture.into_iter().map(|l| (Listener::Capture, l)))
            .collect();
        // Every socket is bound and listening (connections queue until the accept loops run),
        // so ready now: before the `listening` lines, which callers take as "started".
        ready.set(true);
        for (kind, listener) in &listeners {
            own_ports.extend(log_listening(kind.as_str(), listener));
        }
        let mut ctx = Context::new(
            current,
            phase_state,
            metrics,
            resolver,
            orig_dst,
            interceptor,
            settings.hello_timeout,
        );
        ctx.own_ports = own_ports;
        ctx.evidence = evidence;
        ctx.observe = observe;
        Ok(Started {
            listeners,
            ctx: Arc::new(ctx),
            limits: settings.limits,
            ready,
            background,
            running,
        })
    }
}

/// What [`Server::start`] leaves running for the accept loops, and what stops afterwards.
struct Started {
    listeners: Vec<(Listener, TcpListener)>,
    ctx: Arc<Context>,
    limits: Limits,
    ready: Arc<Readiness>,
    background: CancellationToken,
    running: Option<Running>,
}

/// Serves the admin port on `listener` until `stop`; returns its port.
pub fn spawn_admin(
    listener: TcpListener,
    metrics: &Metrics,
    ready: &Arc<Readiness>,
    probe: Option<Arc<ProbeKey>>,
    evidence: Option<Arc<Recorder>>,
    read_only: ReadOnlyLimits,
    stop: &CancellationToken,
) -> Option<u16> {
    let port = log_listening("admin", &listener);
    tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        ready.clone(),
        probe,
        evidence,
        read_only,
        stop.clone(),
    ));
    port
}

/// Announces the policy and phase (log, metrics, decision log), then keeps both current: the
/// phase watcher and, for a policy file, the reload watcher run until `background` stops.
fn start_policy(
    policy: LoadedPolicy,
    sources: &phase::Sources,
    metrics: &Metrics,
    evidence: Option<&Arc<Recorder>>,
    observe: bool,
    background: &CancellationToken,
) -> (Arc<ArcSwap<Policy>>, Arc<phase::State>) {
    let (phase_now, source) = phase::resolve(sources, policy.policy.phase);
    phase::export(metrics, phase_now);
    tracing::info!(phase = phase_now.as_str(), source = source.as_str(), summary = %policy.policy.summary(), "policy loaded");
    if let Some(evidence) = evidence {
        let origin = policy
            .path
            .as_ref()
            .map_or_else(|| "embedded".to_owned(), |p| p.display().to_string());
        evidence.policy(&policy.text, &origin);
        evidence.phase(None, phase_now.as_str(), source.as_str());
    }
    metrics.observe_mode.set(i64::from(observe));
    if observe {
        tracing::warn!(
            "OBSERVE MODE: the agent phase routes as the verification phase would (everything not denied is tunnelled) and only records what the agent-phase policy would have decided; never use it for an untrusted agent"
        );
    }
    let current = Arc::new(ArcSwap::from_pointee(policy.policy));
    let phase_state = Arc::new(phase::State::new(phase_now));
    tokio::spawn(phase::watch(
        sources.clone(),
        phase_state.clone(),
        current.clone(),
        metrics.clone(),
        evidence.cloned(),
        background.clone(),
    ));
    if let Some(path) = policy.path {
        tokio::spawn(reload::watch(
            path,
            policy.text,
            current.clone(),
            metrics.clone(),
            evidence.cloned(),
            background.clone(),
        ));
    }
    (current, phase_state)
}

/// Starts the gateway (its CA files are written before this returns, so before readiness) and
/// serves its usage port.
fn start_gateway(
    policy: &Arc<ArcSwap<Policy>>,
    metrics: &Metrics,
    settings: &Settings,
    usage: Option<TcpListener>,
    evidence: Option<&Arc<Recorder>>,
    background: &CancellationToken,
) -> Result<(Arc<dyn Interceptor>, Running), StartError> {
    let (built, state, running) =
        Gateway::start(policy.clone(), metrics, settings.gateway, background)?;
    if let Some(evidence) = evidence {
        // Set once, before any request can arrive.
        let _ = state.evidence.set(evidence.clone());
    }
    if let Some(usage_listener) = usage {
        log_listening("usage", &usage_listener);
        tokio::spawn(usage_api::serve(
            usage_listener,
            state.ledger.clone(),
            settings.read_only,
            metrics.clone(),
            background.clone(),
        ));
    }
    Ok((Arc::new(built), running))
}

/// Serves DNS on each bound UDP and TCP pair; returns the ports, which are the proxy's own.
fn spawn_dns(
    dns: Vec<(UdpSocket, TcpListener)>,
    stage: &Arc<Dns>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Vec<u16> {
    let mut ports = Vec::new();
    for (udp, tcp) in dns {
        if let Ok(addr) = udp.local_addr() {
            tracing::info!(listener = "dns", addr = %addr, "listening");
            ports.push(addr.port());
        }
        tokio::spawn(dns::listener::serve_udp(
            udp,
            stage.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(dns::listener::serve_tcp(
            tcp,
            stage.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    ports
}

/// Logs a bound listener (tests read ephemeral ports from this line) and returns its port.
pub fn log_listening(listener: &'static str, socket: &TcpListener) -> Option<u16> {
    match socket.local_addr() {
        Ok(addr) => {
            tracing::info!(listener, addr = %addr, "listening");
            Some(addr.port())
        }
        Err(error) => {
            tracing::warn!(listener, %error, "listening on an unknown address");
            None
        }
    }
}
