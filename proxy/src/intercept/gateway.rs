//! The LLM gateway: terminates TLS for intercepted hosts with the per-Pod CA and serves each
//! HTTP request through [`exchange`](super::exchange) (enforce → upstream → spend). Builds the
//! shared [`State`](super::state::State) at start.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::{Quota, RateLimiter};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tollgate_policy::Policy;

use super::body_budget::BodyBudget;
use super::ca::{Authority, CaError, LeafResolver};
use super::replay::Replay;
use super::state::{SecretError, State, WorkspaceStatus, policy_prices, read_secret};
use super::{Intercepted, Interceptor, Outcome, exchange, pricing, workspace};
use crate::metrics::Metrics;
use crate::metrics::spend::SpendMetrics;
use crate::route::Reason;
use crate::spend::{EstimateConfig, Ledger, LedgerConfig};
use crate::tunnel::BoxFuture;
use crate::upstream;

/// A TLS handshake that takes longer than this is cut (the hello already arrived).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head (h1; hyper's default once a timer is set).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// h1 read buffer: the largest request head (hyper's default is ~400 KB per connection).
const MAX_H1_BUFFER: usize = 64 * 1024;
/// h2 header list size (hyper's default; kept explicit beside the others).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Unread request DATA one h2 connection may have in flight (hyper's default is 1 MiB).
const H2_CONNECTION_WINDOW: u32 = 128 * 1024;
/// Unread request DATA one h2 stream may have in flight.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// Concurrent h2 streams per connection (each may hold a request head while it waits).
const H2_MAX_STREAMS: u32 = 16;
/// How often the ledger's files are synced and the usage file rewritten.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Why the gateway could not start; each is a configuration error (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CA could not be generated or loaded.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The CA outputs could not be written.
    #[error("cannot write the CA files to {dir}: {source}")]
    Outputs {
        /// The output directory.
        dir: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A secret the policy names could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Upstream(#[from] upstream::BuildError),
    /// The ledger could not be opened (unreadable journal, locked data dir).
    #[error("cannot open the spend ledger: {0}")]
    Ledger(#[from] crate::spend::ledger::LedgerError),
    /// TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Registering the spend metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The interceptor plugged into the router's seam.
pub struct Gateway {
    tls: TlsAcceptor,
    state: Arc<State>,
    /// Intercepted connections open at once (each may buffer a TLS session, request heads and
    /// h2 windows: see `bounded_http_server`).
    connections: Arc<Semaphore>,
}

/// What the gateway may hold at once, fixed for the process (flags, not policy).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Bytes of request bodies (and their estimated parse) across all requests.
    pub body_budget: usize,
    /// Intercepted connections open at once; more are closed after the ClientHello.
    pub max_connections: usize,
}

/// Background work the gateway started; stop it at shutdown.
pub struct Running {
    flusher: crate::spend::ledger::Flusher,
}

impl Running {
    /// Syncs the ledger and writes the usage file one last time.
    pub fn stop(self) {
        if let Err(error) = self.flusher.stop() {
            tracing::error!(%error, "final ledger flush failed");
        }
    }
}

impl Gateway {
    /// Builds the gateway from the policy: CA (written out before this returns, so readiness
    /// can follow), secrets, upstream client, ledger (restored from its journal), prices; and
    /// starts the price refresh and workspace check in the background.
    pub fn start(
        policy: Arc<ArcSwap<Policy>>,
        metrics: &Metrics,
        capacity: Capacity,
        shutdown: &CancellationToken,
    ) -> Result<(Gateway, Arc<State>, Running), StartError> {
        let snapshot = policy.load_full();
        let g = &snapshot.gateway;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = Arc::new(match &g.tls.ca {
            Some(files) => Authority::load(&files.cert, &files.key, provider.clone())?,
            None => Authority::generate(provider.clone())?,
        });
        ca.write_outputs(&g.tls.output_dir, &g.tls.system_roots)
            .map_err(|source| StartError::Outputs {
                dir: g.tls.output_dir.display().to_string(),
                source,
            })?;
        let tls = server_config(provider.clone(), ca)?;
        let injected_key = g
            .auth
            .inject
            .as_ref()
            .map(|s| read_secret("injected API key", s))
            .transpose()?;
        let client = upstream::client(
            provider,
            g.extra_ca_file.as_deref(),
            policy.clone(),
            g.connect_timeout,
        )?;

        let named_policy = policy.clone();
        let spend_metrics = SpendMetrics::new(Arc::new(move |model: &str| {
            named(&named_policy.load(), model)
        }));
        spend_metrics.register(metrics.registry())?;
        let (ledger, flusher) = open_ledger(g, &spend_metrics)?;

        let state = Arc::new(State {
            prices: ArcSwap::from_pointee(policy_prices(&snapshot)),
            policy: policy.clone(),
            client,
            ledger,
            workspace: WorkspaceStatus::default(),
            limiter: RateLimiter::keyed(
                Quota::per_second(g.limits.requests_per_second).allow_burst(g.limits.burst),
            ),
            concurrency: Arc::new(Semaphore::new(nonzero(g.limits.max_concurrent))),
            body_budget: BodyBudget::new(
                capacity.body_budget,
                &metrics.bounds.body_budget_bytes,
                metrics.bounds.body_budget_in_use_bytes.clone(),
            ),
            injected_key,
            estimate: EstimateConfig {
                min_completion_tokens: u64::from(g.budget.min_completion_tokens),
                ..EstimateConfig::default()
            },
            metrics: metrics.clone(),
            spend_metrics,
            evidence: std::sync::OnceLock::new(),
        });
        tokio::spawn(pricing::refresh(state.clone(), shutdown.clone()));
        tokio::spawn(workspace::poll(state.clone(), shutdown.clone()));
        let gateway = Gateway {
            tls: TlsAcceptor::from(tls),
            state: state.clone(),
            connections: Arc::new(Semaphore::new(capacity.max_connections.max(1))),
        };
        Ok((gateway, state, Running { flusher }))
    }
}

/// Opens the ledger (restored from its journal) and starts its flusher.
fn open_ledger(
    g: &tollgate_policy::GatewaySettings,
    spend_metrics: &SpendMetrics,
) -> Result<(Arc<Ledger>, crate::spend::ledger::Flusher), StartError> {
    let mut config = LedgerConfig::new(g.budget.limit_micros(), g.budget.evaluation_run_id.clone());
    config.data_dir = Some(g.budget.data_dir.clone());
    config.metrics = Some(spend_metrics.clone());
    let (ledger, recovery) = Ledger::open(config)?;
    tracing::info!(
        settled_usd = %recovery.settled,
        recovered_reservations = recovery.recovered.len(),
        torn_tail = recovery.torn_tail,
        data_dir = %g.budget.data_dir.display(),
        "spend ledger restored"
    );
    let ledger = Arc::new(ledger);
    let flusher = ledger.spawn_flusher(FLUSH_EVERY).map_err(|e| {
        StartError::Ledger(crate::spend::ledger::LedgerError::Io {
            path: g.budget.data_dir.clone(),
            source: e,
        })
    })?;

    Ok((ledger, flusher))
}

/// The gateway's HTTP server, with what one connection may buffer before the exchange reads it
/// bounded: the request head (h1 buffer, h2 header list, head deadline) and unread h2 DATA
/// (flow-control windows, streams per connection). The body itself is read under the body budget.
fn bounded_http_server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_H1_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

fn server_config(
    provider: Arc<CryptoProvider>,
    ca: Arc<Authority>,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(LeafResolver(ca)));
    // Node's undici and httpx may speak h2; everything speaks http/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn nonzero(n: NonZeroU32) -> usize {
    usize::try_from(n.get()).unwrap_or(usize::MAX)
}

/// Whether the policy names `model` (so it may be a metric label).
fn named(policy: &Policy, model: &str) -> bool {
    let g = &policy.gateway;
    g.pricing.models.contains_key(model)
        || g.models
            .allow
            .iter()
            .chain(g.models.deny.iter())
            .any(|p| p.is_exact() && p.matches(model))
}

impl Interceptor for Gateway {
    fn handle(&self, conn: Intercepted, stop: CancellationToken) -> BoxFuture<'static, Outcome> {
        let acceptor = self.tls.clone();
        let state = self.state.clone();
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            let bytes_up = conn.replay.len() as u64;
            drop(conn);
            return Box::pin(async move {
                Outcome {
                    reason: Reason::InterceptLimit,
                    bytes_up,
                    bytes_down: 0,
                }
            });
        };
        Box::pin(async move {
            let _permit = permit;
            let io = Replay::new(conn.replay, conn.stream);
            let counts = io.counts();
            let outcome = |reason| {
                let (bytes_up, bytes_down) = counts.get();
                Outcome {
                    reason,
                    bytes_up,
                    bytes_down,
                }
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, sni = %conn.hello.sni, "TLS handshake failed");
                    return outcome(Reason::TlsHandshakeFailed);
                }
                Err(_) => return outcome(Reason::TlsHandshakeTimeout),
            };
            let sni: Arc<str> = Arc::from(conn.hello.sni.as_str());
            let service = service_fn(move |req| {
                let (state, sni) = (state.clone(), sni.clone());
                async move { Ok::<_, std::convert::Infallible>(exchange::serve(state, sni, req).await) }
            });
            let builder = bounded_http_server();
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            match served {
                Ok(()) => outcome(Reason::Intercepted),
                Err(error) => {
                    tracing::debug!(%error, "intercepted connection ended with an error");
                    outcome(Reason::Intercepted)
                }
            }
        })
    }
}
