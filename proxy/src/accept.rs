//! Accepting connections: the open-connection limit, and graceful drain on shutdown.
//!
//! On shutdown the listeners close at once (new connections are refused by the kernel), open
//! connections get up to the drain timeout to finish, and whatever is left is then cut through
//! its stop token, so that it still writes its log line.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{self, Context, Listener};

/// How long cut connections get to record themselves after the drain timeout.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// Limits on accepting.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more are refused and counted.
    pub max_connections: usize,
    /// How long open connections may run on after shutdown begins.
    pub drain_timeout: Duration,
}

/// Accepts on every listener until `shutdown`, then drains. Returns when every connection ended.
pub async fn serve(
    listeners: Vec<(Listener, TcpListener)>,
    ctx: Arc<Context>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(kind, listener)| {
            let acceptor = Acceptor {
                kind,
                listener,
                ctx: ctx.clone(),
                permits: permits.clone(),
                connections: connections.clone(),
                cut: cut.clone(),
            };
            tokio::spawn(acceptor.run(shutdown.clone()))
        })
        .collect();
    for accept_loop in loops {
        let _ = accept_loop.await;
    }
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, drain_timeout = ?limits.drain_timeout, "draining open connections");
    }
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "drain timeout reached; cutting open connections"
        );
        cut.cancel();
        let _ = tokio::time::timeout(CUT_GRACE, connections.wait()).await;
    }
}

struct Acceptor {
    kind: Listener,
    listener: TcpListener,
    ctx: Arc<Context>,
    permits: Arc<Semaphore>,
    connections: TaskTracker,
    cut: CancellationToken,
}

impl Acceptor {
    async fn run(self, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning on a full descriptor table.
                    self.ctx.metrics.accept_errors.inc();
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                let phase = self.ctx.phase.get();
                connection::refuse(
                    &self.ctx.metrics,
                    self.ctx.evidence.as_deref(),
                    self.kind,
                    peer,
                    phase,
                    crate::route::Reason::ConnectionLimit,
                );
                drop(stream);
                continue;
            };
            let (kind, ctx, cut) = (self.kind, self.ctx.clone(), self.cut.clone());
            self.connections.spawn(async move {
                connection::handle(kind, stream, peer, ctx, cut).await;
                drop(permit);
            });
        }
    }
}
