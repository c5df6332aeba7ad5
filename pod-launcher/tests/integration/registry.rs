//! The registry check (OCI distribution API `HEAD /v2/<name>/manifests/<tag>`) against a small
//! local hyper server on 127.0.0.1:0 that records what it was asked.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tollgate_launch::registry::{Credentials, ImageIndex, OciRegistry, RegistryError};
use tollgate_launch::spec::{ImageRef, Registry, Scheme};

/// What the fake registry saw: method, path, Accept, Authorization.
type Seen = Arc<Mutex<Vec<(String, String, String, Option<String>)>>>;

async fn fake_registry() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let header = |name| {
                        req.headers()
                            .get(name)
                            .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
                    };
                    log.lock().unwrap().push((
                        req.method().to_string(),
                        req.uri().path().to_owned(),
                        header(http::header::ACCEPT).unwrap_or_default(),
                        header(http::header::AUTHORIZATION),
                    ));
                    let status = match req.uri().path() {
                        "/v2/present/manifests/sha256-1" => StatusCode::OK,
                        "/v2/locked/manifests/sha256-1" => StatusCode::UNAUTHORIZED,
                        "/v2/broken/manifests/sha256-1" => StatusCode::INTERNAL_SERVER_ERROR,
                        _ => StatusCode::NOT_FOUND,
                    };
                    async move {
                        let mut res = Response::new(Empty::<Bytes>::new());
                        *res.status_mut() = status;
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn image(addr: SocketAddr, repository: &str) -> ImageRef {
    ImageRef {
        registry: Registry::parse(&addr.to_string(), Scheme::Http).unwrap(),
        repository: repository.to_owned(),
        tag: "sha256-1".to_owned(),
    }
}

#[tokio::test]
async fn head_manifest_answers_present_absent_and_errors() {
    let (addr, seen) = fake_registry().await;
    let registry = OciRegistry::new(None, Duration::from_secs(5));
    assert!(registry.has_image(&image(addr, "present")).await.unwrap());
    assert!(!registry.has_image(&image(addr, "absent")).await.unwrap());
    let locked = registry
        .has_image(&image(addr, "locked"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            locked,
            RegistryError::Unauthorized {
                status: StatusCode::UNAUTHORIZED,
                ..
            }
        ),
        "{locked}"
    );
    let broken = registry
        .has_image(&image(addr, "broken"))
        .await
        .unwrap_err();
    assert!(matches!(broken, RegistryError::Status { .. }), "{broken}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    let (method, path, accept, auth) = &seen[0];
    assert_eq!(method, "HEAD");
    assert_eq!(path, "/v2/present/manifests/sha256-1");
    for media_type in [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ] {
        assert!(accept.contains(media_type), "{accept}");
    }
    assert_eq!(auth, &None);
}

#[tokio::test]
async fn credentials_go_as_basic_auth_and_stay_out_of_debug_output() {
    let (addr, seen) = fake_registry().await;
    let credentials = Credentials {
        username: "builder".into(),
        password: "s3cret".into(),
    };
    assert!(!format!("{credentials:?}").contains("s3cret"));
    let registry = OciRegistry::new(Some(credentials), Duration::from_secs(5));
    assert!(registry.has_image(&image(addr, "present")).await.unwrap());
    // base64("builder:s3cret")
    assert_eq!(
        seen.lock().unwrap()[0].3.as_deref(),
        Some("Basic YnVpbGRlcjpzM2NyZXQ=")
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_an_error_not_an_absent_image() {
    // Bind then drop: the port is closed.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let registry = OciRegistry::new(None, Duration::from_secs(5));
    let err = registry
        .has_image(&image(addr, "present"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Transport { .. }), "{err}");
}

#[tokio::test]
async fn a_silent_registry_times_out() {
    // Accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            open.push(s);
        }
    });
    let registry = OciRegistry::new(None, Duration::from_millis(200));
    let err = registry
        .has_image(&image(addr, "present"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err}");
}
