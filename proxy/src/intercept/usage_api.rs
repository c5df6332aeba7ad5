//! The plain-HTTP, read-only usage port (default :8080, as the Python sidecar): the usage JSON
//! at `GET /api/v1/usage`, and `/healthz`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, ReadOnlyLimits, text};
use crate::metrics::Metrics;
use crate::spend::Ledger;

/// Serves the usage port until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ledger: Arc<Ledger>,
    limits: ReadOnlyLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let responder = move |req: &http::Request<hyper::body::Incoming>| match req.uri().path() {
        "/api/v1/usage" => {
            let body = serde_json::to_vec(&ledger.usage()).unwrap_or_default();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    admin::serve_read_only(
        "usage",
        listener,
        Arc::new(responder),
        limits,
        &metrics,
        shutdown,
    )
    .await;
}
