//! The seam the TLS-terminating LLM gateway plugs into.
//!
//! The router hands over the client's socket together with the ClientHello bytes it already
//! read (the gateway's TLS acceptor must see them first) and gets back how the connection ended,
//! so the router still writes the connection's one log line.

pub mod body_budget;
pub mod ca;
pub mod exchange;
pub mod gateway;
pub mod pricing;
pub mod record;
pub mod replay;
pub mod settle;
pub mod state;
pub mod usage_api;
pub mod workspace;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::client_hello::ClientHello;
use crate::route::Reason;
use crate::tunnel::BoxFuture;

/// An intercepted connection, as the router hands it over.
pub struct Intercepted {
    /// The client socket, positioned after the ClientHello bytes in `replay`.
    pub stream: TcpStream,
    /// Every byte read from the client so far, to be fed to the TLS acceptor first.
    pub replay: Vec<u8>,
    /// The parsed ClientHello.
    pub hello: ClientHello,
}

/// How an intercepted connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Bounded reason for the log line and metrics.
    pub reason: Reason,
    /// Bytes read from the client (ClientHello included).
    pub bytes_up: u64,
    /// Bytes written to the client.
    pub bytes_down: u64,
}

/// A TLS-terminating handler for intercepted hosts.
pub trait Interceptor: Send + Sync + 'static {
    /// Serves the connection until it ends, or until `stop` fires (drain timeout).
    fn handle(&self, conn: Intercepted, stop: CancellationToken) -> BoxFuture<'static, Outcome>;
}

/// The stand-in until a gateway is plugged in: closes intercepted connections, fail closed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unavailable;

impl Interceptor for Unavailable {
    fn handle(&self, conn: Intercepted, _stop: CancellationToken) -> BoxFuture<'static, Outcome> {
        let bytes_up = conn.replay.len() as u64;
        drop(conn);
        Box::pin(async move {
            Outcome {
                reason: Reason::InterceptUnavailable,
                bytes_up,
                bytes_down: 0,
            }
        })
    }
}
