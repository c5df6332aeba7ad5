//! Pending work for autoscaling: task Pods submitted and not yet Running, counted server-side
//! (label and field selectors), printed by `pending-work` and served by `serve` as
//! `GET /pending-work` → `{"pending": N}` for KEDA's metrics-api scaler.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::render::MANAGED_BY;

/// The JSON body of `pending-work` and `GET /pending-work`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PendingWork {
    /// Task Pods in phase Pending.
    pub pending: usize,
}

/// Counts the launcher's Pods in phase Pending (one LIST; the API server filters).
pub async fn pending_work(pods: &Api<Pod>) -> Result<PendingWork, kube::Error> {
    let params = ListParams::default()
        .labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
        .fields("status.phase=Pending");
    let list = pods.list(&params).await?;
    Ok(PendingWork {
        pending: list.items.len(),
    })
}

/// Serves `GET /pending-work` and `GET /healthz` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    pods: Api<Pod>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let pods = pods.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, pods.clone()));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    pods: Api<Pod>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/pending-work" => match pending_work(&pods).await {
            Ok(work) => reply(StatusCode::OK, "application/json", json(&work)),
            Err(e) => {
                tracing::warn!(error = %e, "listing pods failed");
                let body = serde_json::json!({ "error": e.to_string() });
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    json(&body),
                )
            }
        },
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

fn json(value: &impl Serialize) -> String {
    // Serialising these plain structs cannot fail; an empty object is a safe fallback.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
