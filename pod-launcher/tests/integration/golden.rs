//! Rendered task Pods compared with golden YAML in `tests/golden/` (and the example in
//! `k8s/examples/`). Regenerate with `UPDATE_GOLDEN=1 cargo test -p tollgate-launch --test integration golden::`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use tollgate_launch::cli::{Cli, Command as Cmd};
use tollgate_launch::render::render;

const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const URL: &str = "https://tasks.s3.us-east-1.amazonaws.com/django__django-12345.tar.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=0123abcd";

/// The example the k8s walkthrough shows; also `k8s/examples/task-pod.yaml`.
pub const EXAMPLE_ARGS: &[&str] = &[
    "render",
    "--task=django__django-12345",
    "--run=run-2026-11-28",
    "--budget-usd=2.50",
    "--pull-secret=zot-pull",
    "--push-secret=zot-push",
    "--proxy-env-secret=tollgate-proxy-env",
];

fn render_args(extra: &[&str]) -> String {
    let mut args = vec![
        "tollgate-launch",
        "--archive-url",
        URL,
        "--archive-sha256",
        SHA,
    ];
    // Subcommand flags must follow the subcommand: put the shared ones after it.
    let (cmd, rest) = extra.split_first().expect("a subcommand");
    args.splice(1..1, [*cmd]);
    args.extend_from_slice(rest);
    let cli = Cli::try_parse_from(&args).expect("valid flags");
    let (ns, label) = (cli.namespace.clone(), cli.phase_label.clone());
    match cli.command {
        Cmd::Render {
            task,
            build,
            skip_build,
        } => {
            let spec = task.spec(&ns, &label).expect("valid spec");
            let build = build.renders_build_pod() && !skip_build;
            render(&spec, build).to_yaml().expect("serializable")
        }
        other => panic!("not render: {other:?}"),
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(5)
            .map(|(i, (e, a))| format!("line {}:\n  golden: {e}\n  actual: {a}", i + 1))
            .collect();
        panic!(
            "{} differs (UPDATE_GOLDEN=1 regenerates):\n{}\n(golden {} lines, actual {} lines)",
            path.display(),
            diff.join("\n"),
            expected.lines().count(),
            actual.lines().count()
        );
    }
}

fn golden(name: &str, args: &[&str]) {
    let path = manifest_dir()
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    check_golden(&path, &render_args(args));
}

#[test]
fn build_with_policy_configmap() {
    golden("build-policy-configmap", EXAMPLE_ARGS);
}

#[test]
fn prebuilt_image_with_policy_file() {
    let policy = manifest_dir().join("tests/fixtures/policy.toml");
    let policy = format!("--policy-file={}", policy.display());
    golden(
        "prebuilt-policy-file",
        &[
            "render",
            "--task=astropy__astropy-12907",
            "--run=r1",
            "--build=never",
            &policy,
        ],
    );
}

#[test]
fn custom_phase_label_agent_ids_https_registry_and_long_names() {
    golden(
        "custom",
        &[
            "render",
            "--phase-label=example.com/phase",
            "--namespace=agents",
            "--task=a-very-long-task-identifier.with.dots__and__underscores-0001",
            "--run=2026-11-28T12.00.00Z_evaluation_run_with_a_long_name",
            "--registry=registry.example.com",
            "--registry-scheme=https",
            "--agent-uid=2000",
            "--agent-gid=2001",
            "--cpu=500m",
            "--memory=1Gi",
            "--ephemeral-storage=20Gi",
            "--proxy-env=RESTRICTED_MODELS=openai/gpt-4o,anthropic/*",
            "--proxy-env=EVALUATION_RUN_ID=override",
            "--policy-configmap=strict-policy",
        ],
    );
}

/// k8s/examples/task-pod.yaml is the launcher's output for the walkthrough's flags.
#[test]
fn k8s_example_is_what_the_launcher_renders() {
    let header = format!(
        "# Rendered by tollgate-launch; pod-launcher/tests/integration/golden.rs keeps it in sync:\n\
         #   tollgate-launch render \\\n\
         #     --archive-url '{URL}' \\\n\
         #     --archive-sha256 {SHA} \\\n\
         #     {}\n",
        EXAMPLE_ARGS[1..].join(" ")
    );
    let path = manifest_dir().join("../k8s/examples/task-pod.yaml");
    check_golden(&path, &format!("{header}{}", render_args(EXAMPLE_ARGS)));
}

fn launch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate-launch"))
        .args(args)
        .env_remove("TOLLGATE_NAMESPACE")
        .output()
        .expect("run tollgate-launch")
}

#[test]
fn bad_flags_exit_64_with_the_reason() {
    let bad_policy = manifest_dir().join("tests/fixtures/bad-policy.toml");
    let bad_policy = format!("--policy-file={}", bad_policy.display());
    let base = [
        "render",
        "--archive-url",
        URL,
        "--archive-sha256",
        SHA,
        "--run=r1",
    ];
    for (extra, needle) in [
        (vec!["--task=Django"], "task id"),
        (vec!["--task=t", "--agent-uid=1337"], "1337"),
        (vec!["--task=t", "--agent-gid=1337"], "1337"),
        (vec!["--task=t", "--agent-uid=0"], "non-root"),
        (vec!["--task=t", "--agent-gid=0"], "non-root"),
        (vec!["--task=t", "--agent-uid=-5"], "non-root"),
        (vec!["--task=t", "--build-storage=lots"], "--build-storage"),
        (vec!["--task=t", "--budget-usd=-1"], "budget"),
        (vec!["--task=t", "--cpu=two"], "--cpu"),
        (vec!["--task=t", &bad_policy], "phase"),
        (vec!["--task=t", "--proxy-env=PATH=/tmp"], "proxy env"),
        (vec!["--task=t", "--registry=http://zot"], "registry"),
        (vec!["--task=t", "--unknown-flag"], "unknown-flag"),
        (vec!["--task=t", "--proxy-secret=keys"], "NAME:MOUNTPATH"),
        (
            vec!["--task=t", "--proxy-secret=Keys:/keys"],
            "--proxy-secret",
        ),
        (vec!["--task=t", "--proxy-secret=keys:keys"], "absolute"),
        (
            vec!["--task=t", "--proxy-secret=keys:/a/../etc/tollgate"],
            "'..'",
        ),
        (vec!["--task=t", "--proxy-secret=keys:/"], "absolute"),
        (
            vec!["--task=t", "--proxy-secret=keys:/etc/tollgate"],
            "the policy mount",
        ),
        (
            vec!["--task=t", "--proxy-secret=keys:/etc"],
            "the policy mount",
        ),
        (
            vec!["--task=t", "--proxy-secret=keys:/certs/output/x"],
            "the certs mount",
        ),
        (
            vec!["--task=t", "--proxy-secret=keys:/var/lib/tollgate"],
            "the data mount",
        ),
        (vec!["--task=t", "--proxy-secret=keys:/tmp/k"], "/tmp"),
        (
            vec!["--task=t", "--proxy-secret=a:/k", "--proxy-secret=b:/k/x"],
            "another mount",
        ),
        (
            vec!["--task=t", "--proxy-file=/nonexistent/ca.pem:/extra/ca.pem"],
            "/nonexistent/ca.pem",
        ),
        (
            vec!["--task=t", "--build=never", "--skip-build"],
            "--skip-build",
        ),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter().copied());
        let out = launch(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn render_prints_yaml_and_exits_0() {
    let out = launch(&[
        "render",
        "--archive-url",
        URL,
        "--archive-sha256",
        SHA,
        "--task=t",
        "--run=r",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.starts_with("apiVersion: v1\nkind: Pod\n"), "{yaml}");
}

#[test]
fn check_pod_passes_what_render_makes_and_skips_the_build_pod() {
    let example = manifest_dir().join("../k8s/examples/task-pod.yaml");
    let out = launch(&["check-pod", example.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("skipped: pod build-django--django-12345-0a1b2c3d4e5f"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: pod task-django--django-12345-run-2026-11-28"),
        "{stdout}"
    );
}

#[test]
fn check_pod_refuses_a_pod_whose_image_picks_the_agent_user_or_gives_it_group_1337() {
    let fixture = manifest_dir().join("tests/fixtures/image-user-pod.yaml");
    let out = launch(&["check-pod", fixture.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for needle in [
        "pod hand-written would let a container act as the proxy's UID/GID 1337",
        "pod: gives every container the proxy's group 1337 (proxy-gid-in-pod)",
        "agent: runAsUser is not set, so the image's USER (maybe 1337) decides (run-as-user-unset)",
        "agent: runAsGroup is not set",
        "agent: keeps CAP_SETUID/CAP_SETGID",
        "agent: allowPrivilegeEscalation is not false",
        "sidecar: runs as GID 1337",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing in:\n{stderr}");
    }
    assert!(!stderr.contains("tollgate-proxy:"), "{stderr}");
}

/// The proxy's extra files: a Secret per `--proxy-secret`, one launcher-made Secret for the
/// `--proxy-file`s, all mounted read-only into `tollgate-proxy` only.
#[test]
fn proxy_secrets_and_files() {
    let ca = manifest_dir().join("tests/fixtures/extra-ca.pem");
    let ca = format!("--proxy-file={}:/etc/tollgate-extra/ca.pem", ca.display());
    golden(
        "proxy-mounts",
        &[
            "render",
            "--task=t",
            "--run=r1",
            "--build=never",
            "--proxy-secret=openrouter-keys:/etc/tollgate-keys",
            &ca,
        ],
    );
}

#[test]
fn only_the_proxy_mounts_the_extra_files() {
    let ca = manifest_dir().join("tests/fixtures/extra-ca.pem");
    let ca = format!("--proxy-file={}:/etc/tollgate-extra/ca.pem", ca.display());
    let out = launch(&[
        "render",
        "--archive-url",
        URL,
        "--archive-sha256",
        SHA,
        "--task=t",
        "--run=r1",
        "--proxy-secret=openrouter-keys:/etc/tollgate-keys",
        &ca,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Pod", "Secret", "Pod"],
        "build Pod, files Secret, task Pod"
    );
    let secret = &docs[1];
    assert_eq!(secret["metadata"]["name"], "task-t-r1-proxy-files");
    assert!(secret["data"]["file-0"].is_string(), "{secret}");
    let mut seen = 0;
    for pod in [&docs[0], &docs[2]] {
        let spec = &pod["spec"];
        let containers = spec["initContainers"]
            .as_array()
            .into_iter()
            .chain(spec["containers"].as_array())
            .flatten();
        for c in containers {
            let mounts: Vec<(&str, &serde_json::Value)> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| (m["name"].as_str().unwrap(), m))
                .collect();
            let extra: Vec<_> = mounts
                .iter()
                .filter(|(n, _)| n.starts_with("proxy-secret-") || *n == "proxy-files")
                .collect();
            if c["name"] == "tollgate-proxy" {
                assert_eq!(extra.len(), 2, "{c}");
                for (_, m) in extra {
                    assert_eq!(m["readOnly"], true, "{m}");
                }
                seen += 1;
            } else {
                assert!(extra.is_empty(), "{} mounts {extra:?}", c["name"]);
            }
        }
    }
    assert_eq!(seen, 1, "one proxy container");
}
