//! submit, phase, status, wait, delete and pending-work against kube-rs's mocked API service
//! (tower-test): each test scripts the exact requests it expects (method, path and query,
//! content type, JSON body) and the API server's answers.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::pin::pin;
use std::time::Duration;

use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::client::Body;
use serde_json::{Value, json};
use tollgate_launch::cli::{Cli, Command};
use tollgate_launch::pending::{PendingWork, pending_work, serve};
use tollgate_launch::registry::{ImageIndex, RegistryError};
use tollgate_launch::spec::{ImageRef, TaskSpec};
use tollgate_launch::steer::{self, WaitError, WaitFor};
use tollgate_launch::submit::{BuildMode, BuildWait, Submitted, submit};
use tollgate_policy::Phase;
use tower_test::mock;

const NS: &str = "tollgate-tasks";
const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// One request the test expects, and the answer the fake API server gives.
struct Exchange {
    method: Method,
    path_and_query: String,
    content_type: Option<&'static str>,
    body: Option<Value>,
    status: StatusCode,
    answer: Value,
}

fn exchange(method: Method, path_and_query: &str, answer: Value) -> Exchange {
    Exchange {
        method,
        path_and_query: path_and_query.to_owned(),
        content_type: None,
        body: None,
        status: StatusCode::OK,
        answer,
    }
}

/// A client whose API server plays `script` in order; join the handle to check it all ran.
fn scripted(script: Vec<Exchange>) -> (Client, tokio::task::JoinHandle<()>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut handle = pin!(handle);
        for (i, want) in script.into_iter().enumerate() {
            let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                panic!(
                    "request {i} ({} {}) never came",
                    want.method, want.path_and_query
                )
            });
            assert_eq!(request.method(), want.method, "request {i}");
            assert_eq!(
                request.uri().path_and_query().map(|p| p.as_str()),
                Some(want.path_and_query.as_str()),
                "request {i}"
            );
            if let Some(ct) = want.content_type {
                assert_eq!(
                    request
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap()),
                    Some(ct),
                    "request {i}"
                );
            }
            let bytes = request.into_body().collect_bytes().await.unwrap();
            if let Some(body) = want.body {
                let got: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(got, body, "request {i} body");
            }
            send.send_response(
                Response::builder()
                    .status(want.status)
                    .body(Body::from(serde_json::to_vec(&want.answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, NS), task)
}

fn spec(extra: &[&str]) -> TaskSpec {
    let mut args = vec![
        "tollgate-launch",
        "submit",
        "--task=django__django-12345",
        "--run=r1",
        "--archive-url=https://example.invalid/t.tar.gz",
        "--archive-sha256",
        SHA,
    ];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(&args).unwrap();
    match cli.command {
        Command::Submit { task, .. } => task.spec(&cli.namespace, &cli.phase_label).unwrap(),
        _ => unreachable!(),
    }
}

/// The registry's answer, fixed.
struct Index(bool);

impl ImageIndex for Index {
    async fn has_image(&self, _: &ImageRef) -> Result<bool, RegistryError> {
        Ok(self.0)
    }
}

fn pod_answer(name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NS, "uid": uid },
        "spec": { "containers": [] }
    })
}

const POD: &str = "task-django--django-12345-r1";
const IMAGE: &str = "zot.tollgate-system.svc.cluster.local:5000/django__django-12345:sha256-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

const BUILD_POD: &str = "build-django--django-12345-0a1b2c3d4e5f";
const WAIT: BuildWait = BuildWait {
    timeout: Duration::from_secs(60),
    poll: Duration::from_millis(10),
};

fn pods_path() -> String {
    format!("/api/v1/namespaces/{NS}/pods?&fieldManager=tollgate-launch")
}

fn build_pod_in(phase: &str) -> Value {
    let mut pod = pod_answer(BUILD_POD, "b-1");
    pod["status"] = json!({ "phase": phase });
    pod
}

#[tokio::test]
async fn submit_builds_in_its_own_pod_first_then_creates_the_task_pod() {
    let spec = spec(&[]);
    let rendered = tollgate_launch::render::render(&spec, true);
    let build_pod = serde_json::to_value(rendered.build.clone().unwrap()).unwrap();
    assert_eq!(build_pod["metadata"]["name"], BUILD_POD);
    assert_eq!(
        build_pod["metadata"]["labels"]["tollgate.dev/build"],
        "true"
    );
    let task_pod = serde_json::to_value(&rendered.pod).unwrap();
    // The task Pod neither builds nor carries the build label (its egress is the agent's).
    assert_eq!(
        task_pod["metadata"]["labels"].get("tollgate.dev/build"),
        None
    );
    let init: Vec<&str> = task_pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["tollgate-init", "tollgate-proxy"]);
    let (client, script) = scripted(vec![
        Exchange {
            content_type: Some("application/json"),
            body: Some(build_pod),
            ..exchange(Method::POST, &pods_path(), build_pod_in("Pending"))
        },
        exchange(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/pods/{BUILD_POD}"),
            build_pod_in("Running"),
        ),
        exchange(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/pods/{BUILD_POD}"),
            build_pod_in("Succeeded"),
        ),
        Exchange {
            body: Some(json!({})),
            ..exchange(
                Method::DELETE,
                &format!("/api/v1/namespaces/{NS}/pods/{BUILD_POD}?"),
                build_pod_in("Succeeded"),
            )
        },
        Exchange {
            content_type: Some("application/json"),
            body: Some(task_pod),
            ..exchange(Method::POST, &pods_path(), pod_answer(POD, "u-1"))
        },
    ]);
    let done = submit(client, &spec, &Index(false), BuildMode::Auto, WAIT)
        .await
        .unwrap();
    script.await.unwrap();
    assert_eq!(
        done,
        Submitted {
            namespace: NS.into(),
            pod: POD.into(),
            image: IMAGE.into(),
            build: true,
            build_pod: Some(BUILD_POD.into()),
            policy_configmap: None,
            proxy_files: None,
        }
    );
}

#[tokio::test]
async fn a_failed_build_creates_no_task_pod_and_keeps_the_build_pod() {
    let spec = spec(&[]);
    let (client, script) = scripted(vec![
        exchange(Method::POST, &pods_path(), build_pod_in("Pending")),
        exchange(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/pods/{BUILD_POD}"),
            build_pod_in("Failed"),
        ),
    ]);
    let err = submit(client, &spec, &Index(false), BuildMode::Always, WAIT)
        .await
        .unwrap_err();
    // The script ends here: had submit gone on (deleted the build Pod, created the task Pod),
    // the mock would have had no answer and submit would have failed with another error.
    script.await.unwrap();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "image build in pod {BUILD_POD}: pod {BUILD_POD}: Failed"
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn a_second_submit_of_the_same_archive_joins_the_running_build() {
    let spec = spec(&[]);
    let conflict = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": "pods \"build-django--django-12345-0a1b2c3d4e5f\" already exists",
        "reason": "AlreadyExists", "code": 409
    });
    let (client, script) = scripted(vec![
        Exchange {
            status: StatusCode::CONFLICT,
            ..exchange(Method::POST, &pods_path(), conflict)
        },
        exchange(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/pods/{BUILD_POD}"),
            build_pod_in("Succeeded"),
        ),
        exchange(
            Method::DELETE,
            &format!("/api/v1/namespaces/{NS}/pods/{BUILD_POD}?"),
            build_pod_in("Succeeded"),
        ),
        exchange(Method::POST, &pods_path(), pod_answer(POD, "u-1")),
    ]);
    let done = submit(client, &spec, &Index(false), BuildMode::Auto, WAIT)
        .await
        .unwrap();
    script.await.unwrap();
    assert_eq!(done.pod, POD);
    assert_eq!(done.build_pod.as_deref(), Some(BUILD_POD));
}

#[tokio::test]
async fn submit_skips_the_build_when_the_registry_has_the_image() {
    let spec = spec(&[]);
    let expected_pod =
        serde_json::to_value(tollgate_launch::render::render(&spec, false).pod).unwrap();
    let init: Vec<&str> = expected_pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["tollgate-init", "tollgate-proxy"]);
    let (client, script) = scripted(vec![Exchange {
        body: Some(expected_pod),
        ..exchange(
            Method::POST,
            &format!("/api/v1/namespaces/{NS}/pods?&fieldManager=tollgate-launch"),
            pod_answer(POD, "u-1"),
        )
    }]);
    let done = submit(client, &spec, &Index(true), BuildMode::Auto, WAIT)
        .await
        .unwrap();
    script.await.unwrap();
    assert!(!done.build);
}

#[tokio::test]
async fn submit_with_a_policy_file_creates_the_configmap_then_the_pod_then_the_owner_reference() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/policy.toml");
    let spec = spec(&["--policy-file", policy]);
    let rendered = tollgate_launch::render::render(&spec, true);
    let cm_name = format!("{POD}-policy");
    let cm = rendered.policy.clone().unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some(cm_name.as_str()));
    let (client, script) = scripted(vec![
        Exchange {
            body: Some(serde_json::to_value(&cm).unwrap()),
            ..exchange(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/configmaps?&fieldManager=tollgate-launch"),
                serde_json::to_value(&cm).unwrap(),
            )
        },
        Exchange {
            body: Some(serde_json::to_value(&rendered.pod).unwrap()),
            ..exchange(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/pods?&fieldManager=tollgate-launch"),
                pod_answer(POD, "uid-42"),
            )
        },
        Exchange {
            content_type: Some("application/merge-patch+json"),
            body: Some(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "ownerReferences": [
                    { "apiVersion": "v1", "kind": "Pod", "name": POD, "uid": "uid-42" }
                ] }
            })),
            ..exchange(
                Method::PATCH,
                &format!(
                    "/api/v1/namespaces/{NS}/configmaps/{cm_name}?&fieldManager=tollgate-launch"
                ),
                serde_json::to_value(&cm).unwrap(),
            )
        },
    ]);
    let done = submit(client, &spec, &Index(true), BuildMode::Auto, WAIT)
        .await
        .unwrap();
    script.await.unwrap();
    assert_eq!(done.policy_configmap.as_deref(), Some(cm_name.as_str()));
}

#[tokio::test]
async fn a_refused_pod_removes_the_policy_configmap_it_left() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/policy.toml");
    let spec = spec(&["--policy-file", policy]);
    let cm = tollgate_launch::render::render(&spec, true).policy.unwrap();
    let cm_name = format!("{POD}-policy");
    let status = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": "pods \"x\" is forbidden", "reason": "Forbidden", "code": 403
    });
    let (client, script) = scripted(vec![
        exchange(
            Method::POST,
            &format!("/api/v1/namespaces/{NS}/configmaps?&fieldManager=tollgate-launch"),
            serde_json::to_value(&cm).unwrap(),
        ),
        Exchange {
            status: StatusCode::FORBIDDEN,
            ..exchange(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/pods?&fieldManager=tollgate-launch"),
                status,
            )
        },
        Exchange {
            body: Some(json!({})),
            ..exchange(
                Method::DELETE,
                &format!("/api/v1/namespaces/{NS}/configmaps/{cm_name}?"),
                serde_json::to_value(&cm).unwrap(),
            )
        },
    ]);
    let err = submit(client, &spec, &Index(false), BuildMode::Never, WAIT)
        .await
        .unwrap_err();
    script.await.unwrap();
    assert!(err.to_string().starts_with("create pod:"), "{err}");
}

const EXTRA_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/extra-ca.pem");

#[tokio::test]
async fn submit_with_proxy_files_creates_their_secret_then_the_pod_then_the_owner_references() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/policy.toml");
    let file = format!("{EXTRA_CA}:/etc/tollgate-extra/ca.pem");
    let spec = spec(&["--policy-file", policy, "--proxy-file", &file]);
    let rendered = tollgate_launch::render::render(&spec, false);
    let cm = rendered.policy.clone().unwrap();
    let cm_name = format!("{POD}-policy");
    let secret = rendered.files.clone().unwrap();
    let secret_name = format!("{POD}-proxy-files");
    assert_eq!(secret.metadata.name.as_deref(), Some(secret_name.as_str()));
    let secret_json = serde_json::to_value(&secret).unwrap();
    assert_eq!(
        secret_json["data"]["file-0"],
        json!(base64_of(&std::fs::read(EXTRA_CA).unwrap()))
    );
    let owner = |kind: &str| {
        json!({
            "apiVersion": "v1", "kind": kind,
            "metadata": { "ownerReferences": [
                { "apiVersion": "v1", "kind": "Pod", "name": POD, "uid": "uid-7" }
            ] }
        })
    };
    let (client, script) = scripted(vec![
        exchange(
            Method::POST,
            &format!("/api/v1/namespaces/{NS}/configmaps?&fieldManager=tollgate-launch"),
            serde_json::to_value(&cm).unwrap(),
        ),
        Exchange {
            body: Some(secret_json.clone()),
            ..exchange(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/secrets?&fieldManager=tollgate-launch"),
                secret_json.clone(),
            )
        },
        Exchange {
            body: Some(serde_json::to_value(&rendered.pod).unwrap()),
            ..exchange(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/pods?&fieldManager=tollgate-launch"),
                pod_answer(POD, "uid-7"),
            )
        },
        Exchange {
            body: Some(owner("ConfigMap")),
            ..exchange(
                Method::PATCH,
                &format!(
                    "/api/v1/namespaces/{NS}/configmaps/{cm_name}?&fieldManager=tollgate-launch"
                ),
                serde_json::to_value(&cm).unwrap(),
            )
        },
        Exchange {
            content_type: Some("application/merge-patch+json"),
            body: Some(owner("Secret")),
            ..exchange(
                Method::PATCH,
                &format!(
                    "/api/v1/namespaces/{NS}/secrets/{secret_name}?&fieldManager=tollgate-launch"
                ),
                secret_json,
            )
        },
    ]);
    let done = submit(client, &spec, &Index(true), BuildMode::Auto, WAIT)
        .await
        .unwrap();
    script.await.unwrap();
    assert_eq!(done.proxy_files.as_deref(), Some(secret_name.as_str()));
}

#[tokio::test]
async fn a_refused_pod_removes_the_proxy_files_secret_it_left() {
    let file = format!("{EXTRA_CA}:/etc/tollgate-extra/ca.pem");
    let spec = spec(&["--proxy-file", &file]);
    let secret =
        serde_json::to_value(tollgate_launch::render::render(&spec, false).files.unwrap()).unwrap();
    let secret_name = format!("{POD}-proxy-files");
    let status = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": "pods \"x\" is forbidden", "reason": "Forbidden", "code": 403
    });
    let (client, script) = scripted(vec![
        exchange(
            Method::POST,
            &format!("/api/v1/namespaces/{NS}/secrets?&fieldManager=tollgate-launch"),
            secret.clone(),
        ),
        Exchange {
            status: StatusCode::FORBIDDEN,
            ..exchange(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/pods?&fieldManager=tollgate-launch"),
                status,
            )
        },
        exchange(
            Method::DELETE,
            &format!("/api/v1/namespaces/{NS}/secrets/{secret_name}?"),
            secret,
        ),
    ]);
    let err = submit(client, &spec, &Index(false), BuildMode::Never, WAIT)
        .await
        .unwrap_err();
    script.await.unwrap();
    assert!(err.to_string().starts_with("create pod:"), "{err}");
}

/// Standard base64 with padding, as the API carries Secret data.
fn base64_of(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn phase_is_a_merge_patch_of_the_label_only() {
    let mut answer = pod_answer(POD, "u");
    answer["metadata"]["labels"] = json!({ "ridges.ai/phase": "verification" });
    let (client, script) = scripted(vec![Exchange {
        content_type: Some("application/merge-patch+json"),
        body: Some(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "labels": { "ridges.ai/phase": "verification" } }
        })),
        ..exchange(
            Method::PATCH,
            &format!("/api/v1/namespaces/{NS}/pods/{POD}?&fieldManager=tollgate-launch"),
            answer,
        )
    }]);
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let now = steer::set_phase(&pods, POD, "ridges.ai/phase", Phase::Verification)
        .await
        .unwrap();
    script.await.unwrap();
    assert_eq!(now.as_deref(), Some("verification"));
}

fn pod_list(phases: &[&str]) -> Value {
    let items: Vec<Value> = phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut pod = pod_answer(&format!("task-{i}"), "u");
            pod["status"] = json!({ "phase": p });
            pod
        })
        .collect();
    json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items })
}

const PENDING_QUERY: &str = "/api/v1/namespaces/tollgate-tasks/pods?&fieldSelector=status.phase%3DPending&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dtollgate-launch";

#[tokio::test]
async fn pending_work_lists_pending_launcher_pods_server_side() {
    let (client, script) = scripted(vec![exchange(
        Method::GET,
        PENDING_QUERY,
        pod_list(&["Pending", "Pending", "Pending"]),
    )]);
    let work = pending_work(&Api::namespaced(client, NS)).await.unwrap();
    script.await.unwrap();
    assert_eq!(work, PendingWork { pending: 3 });
    assert_eq!(serde_json::to_string(&work).unwrap(), r#"{"pending":3}"#);
}

#[tokio::test]
async fn serve_answers_pending_work_for_keda() {
    let (client, script) = scripted(vec![
        exchange(
            Method::GET,
            PENDING_QUERY,
            pod_list(&["Pending", "Pending"]),
        ),
        Exchange {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..exchange(
                Method::GET,
                PENDING_QUERY,
                json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure", "message": "etcd", "code": 500 }),
            )
        },
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Api::namespaced(client, NS), async {
        let _ = stopped.await;
    }));
    let get = |path: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "launcher")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    assert_eq!(
        get("/pending-work").await,
        (StatusCode::OK, r#"{"pending":2}"#.into())
    );
    let (status, body) = get("/pending-work").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("error"), "{body}");
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    assert_eq!(get("/other").await.0, StatusCode::NOT_FOUND);
    script.await.unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

fn pod_in_phase(phase: &str) -> Value {
    let mut pod = pod_answer(POD, "u");
    pod["status"] = json!({ "phase": phase });
    pod
}

#[tokio::test(start_paused = true)]
async fn wait_polls_until_running() {
    let get = format!("/api/v1/namespaces/{NS}/pods/{POD}");
    let (client, script) = scripted(vec![
        exchange(Method::GET, &get, pod_in_phase("Pending")),
        exchange(Method::GET, &get, pod_in_phase("Pending")),
        exchange(Method::GET, &get, pod_in_phase("Running")),
    ]);
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let pod = steer::wait(
        &pods,
        POD,
        WaitFor::Running,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    script.await.unwrap();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));
}

#[tokio::test(start_paused = true)]
async fn wait_times_out_and_reports_failure() {
    let get = format!("/api/v1/namespaces/{NS}/pods/{POD}");
    let (client, script) = scripted(vec![
        exchange(Method::GET, &get, pod_in_phase("Pending")),
        exchange(Method::GET, &get, pod_in_phase("Pending")),
        exchange(Method::GET, &get, pod_in_phase("Failed")),
    ]);
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let timeout = steer::wait(
        &pods,
        POD,
        WaitFor::Running,
        Duration::from_secs(3),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(timeout, Err(WaitError::Timeout { .. })),
        "{timeout:?}"
    );
    let failed = steer::wait(
        &pods,
        POD,
        WaitFor::Completed,
        Duration::from_secs(3),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(failed, Err(WaitError::Failed { .. })),
        "{failed:?}"
    );
    script.await.unwrap();
}

#[tokio::test]
async fn delete_is_one_delete_request() {
    let (client, script) = scripted(vec![Exchange {
        body: Some(json!({})),
        ..exchange(
            Method::DELETE,
            &format!("/api/v1/namespaces/{NS}/pods/{POD}?"),
            pod_in_phase("Running"),
        )
    }]);
    steer::delete(&Api::namespaced(client, NS), POD)
        .await
        .unwrap();
    script.await.unwrap();
}

#[test]
fn status_view_reads_phase_label_image_and_the_build_digest() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": POD,
            "labels": { "ridges.ai/phase": "agent" },
            "annotations": { "tollgate.dev/image": IMAGE }
        },
        "status": {
            "phase": "Running",
            "initContainerStatuses": [
                { "name": "build", "ready": false, "restartCount": 0, "image": "k", "imageID": "",
                  "state": { "terminated": { "exitCode": 0, "reason": "Completed", "message": "sha256:abc\n" } } },
                { "name": "tollgate-proxy", "ready": true, "restartCount": 0, "image": "p", "imageID": "",
                  "state": { "running": {} } }
            ],
            "containerStatuses": [
                { "name": "agent", "ready": false, "restartCount": 0, "image": "a", "imageID": "",
                  "state": { "waiting": { "reason": "ContainerCreating" } } }
            ]
        }
    }))
    .unwrap();
    let view = serde_json::to_value(steer::StatusView::of(&pod, "ridges.ai/phase")).unwrap();
    assert_eq!(
        view,
        json!({
            "pod": POD, "pod_phase": "Running", "phase": "agent", "image": IMAGE,
            "containers": [
                { "name": "build", "state": "terminated", "reason": "Completed", "exit_code": 0,
                  "message": "sha256:abc", "ready": false, "restarts": 0 },
                { "name": "tollgate-proxy", "state": "running", "ready": true, "restarts": 0 },
                { "name": "agent", "state": "waiting", "reason": "ContainerCreating", "ready": false, "restarts": 0 }
            ]
        })
    );
}

#[tokio::test]
async fn a_completed_tasks_decision_head_is_recorded_as_an_annotation() {
    let head = "ab".repeat(32);
    let mut done = pod_in_phase("Succeeded");
    done["status"]["initContainerStatuses"] = json!([{
        "name": "tollgate-proxy", "image": "p", "imageID": "", "ready": false, "restartCount": 0,
        "state": { "terminated": {
            "exitCode": 0, "message": format!("decisions-head={head}\nrecords=9\n")
        } }
    }]);
    let pod: Pod = serde_json::from_value(done.clone()).unwrap();
    assert_eq!(steer::decisions_head(&pod).as_deref(), Some(head.as_str()));
    let mut forged = done.clone();
    forged["status"]["initContainerStatuses"][0]["name"] = json!("agent");
    let forged: Pod = serde_json::from_value(forged).unwrap();
    assert_eq!(
        steer::decisions_head(&forged),
        None,
        "only the proxy's message counts"
    );

    let (client, script) = scripted(vec![Exchange {
        content_type: Some("application/merge-patch+json"),
        body: Some(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "annotations": { "tollgate.dev/decisions-head": head } }
        })),
        ..exchange(
            Method::PATCH,
            &format!("/api/v1/namespaces/{NS}/pods/{POD}?&fieldManager=tollgate-launch"),
            done,
        )
    }]);
    let pods: Api<Pod> = Api::namespaced(client, NS);
    steer::record_decisions_head(&pods, POD, &head)
        .await
        .unwrap();
    script.await.unwrap();
}

/// A task that failed ran too: `wait --for completed` still reports the failure, after
/// recording the proxy's decision-log head from its termination message.
#[tokio::test(start_paused = true)]
async fn a_failed_tasks_decision_head_is_recorded_too() {
    let head = "cd".repeat(32);
    let mut failed = pod_in_phase("Failed");
    failed["status"]["initContainerStatuses"] = json!([{
        "name": "tollgate-proxy", "image": "p", "imageID": "", "ready": false, "restartCount": 0,
        "state": { "terminated": {
            "exitCode": 0, "message": format!("decisions-head={head}\n")
        } }
    }]);
    let get = format!("/api/v1/namespaces/{NS}/pods/{POD}");
    let (client, script) = scripted(vec![
        exchange(Method::GET, &get, failed.clone()),
        Exchange {
            content_type: Some("application/merge-patch+json"),
            body: Some(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "annotations": { "tollgate.dev/decisions-head": head } }
            })),
            ..exchange(
                Method::PATCH,
                &format!("/api/v1/namespaces/{NS}/pods/{POD}?&fieldManager=tollgate-launch"),
                failed,
            )
        },
    ]);
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let waited = steer::wait_and_anchor(
        &pods,
        POD,
        WaitFor::Completed,
        Duration::from_secs(3),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(waited, Err(WaitError::Failed { .. })),
        "{waited:?}"
    );
    script.await.unwrap();
}
