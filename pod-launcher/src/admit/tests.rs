#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use clap::Parser;
use k8s_openapi::api::core::v1::{Capabilities, Pod};

use super::{Reason, findings};
use crate::cli::{Cli, Command};
use crate::render::render;

fn rendered(extra: &[&str]) -> Pod {
    let mut args = vec![
        "tollgate-launch",
        "render",
        "--task=t",
        "--run=r",
        "--archive-url=https://example.invalid/t.tar.gz",
        "--archive-sha256=0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
    ];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(&args).unwrap();
    match cli.command {
        Command::Render { task, .. } => {
            render(&task.spec(&cli.namespace, &cli.phase_label).unwrap(), true).pod
        }
        _ => unreachable!(),
    }
}

fn reasons_of(pod: &Pod, container: &str) -> Vec<Reason> {
    findings(pod)
        .into_iter()
        .filter(|f| f.container == container)
        .map(|f| f.reason)
        .collect()
}

fn agent(pod: &mut Pod) -> &mut k8s_openapi::api::core::v1::Container {
    let spec = pod.spec.as_mut().unwrap();
    spec.containers
        .iter_mut()
        .find(|c| c.name == "agent")
        .unwrap()
}

#[test]
fn the_rendered_pod_passes() {
    assert_eq!(findings(&rendered(&[])), vec![]);
    assert_eq!(
        findings(&rendered(&["--agent-uid=4242", "--agent-gid=4343"])),
        vec![]
    );
}

#[test]
fn an_agent_whose_image_chooses_its_user_is_refused() {
    let mut pod = rendered(&[]);
    let sc = agent(&mut pod).security_context.as_mut().unwrap();
    sc.run_as_user = None;
    sc.run_as_group = None;
    assert_eq!(
        reasons_of(&pod, "agent"),
        vec![Reason::UserUnset, Reason::GroupUnset]
    );
    // A Pod-wide runAsUser/runAsGroup counts, as in the kubelet.
    let psc = pod
        .spec
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    psc.run_as_user = Some(1000);
    psc.run_as_group = Some(1337);
    assert_eq!(reasons_of(&pod, "agent"), vec![Reason::ProxyGroup]);
}

#[test]
fn the_proxy_group_in_the_pod_or_the_proxy_ids_elsewhere_are_refused() {
    let mut pod = rendered(&[]);
    let psc = pod
        .spec
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    psc.supplemental_groups = Some(vec![5, 1337]);
    assert_eq!(reasons_of(&pod, "pod"), vec![Reason::ProxyGroupInPod]);
    let mut pod = rendered(&[]);
    pod.spec
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .fs_group = Some(1337);
    pod.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(
        reasons_of(&pod, "pod"),
        vec![Reason::HostNetwork, Reason::ProxyGroupInPod]
    );
    let mut pod = rendered(&[]);
    agent(&mut pod)
        .security_context
        .as_mut()
        .unwrap()
        .run_as_user = Some(1337);
    assert_eq!(reasons_of(&pod, "agent"), vec![Reason::ProxyUser]);
}

#[test]
fn capabilities_that_reach_setuid_are_refused() {
    for (add, drop, refused) in [
        (None, Some(vec!["ALL"]), false),
        (None, Some(vec!["cap_setuid", "SETGID"]), false),
        (None, Some(vec!["NET_ADMIN", "NET_RAW", "SETUID"]), true),
        (None, None, true),
        (Some(vec!["SETUID"]), Some(vec!["ALL"]), true),
        (Some(vec!["NET_ADMIN"]), Some(vec!["ALL"]), false),
    ] {
        let mut pod = rendered(&[]);
        let sc = agent(&mut pod).security_context.as_mut().unwrap();
        let strings = |v: Option<Vec<&str>>| v.map(|v| v.into_iter().map(String::from).collect());
        sc.capabilities = Some(Capabilities {
            add: strings(add.clone()),
            drop: strings(drop.clone()),
        });
        let got = reasons_of(&pod, "agent").contains(&Reason::SetuidCapable);
        assert_eq!(got, refused, "add {add:?} drop {drop:?}");
    }
}

#[test]
fn escalation_privileged_and_a_proxy_off_1337_are_refused() {
    let mut pod = rendered(&[]);
    let sc = agent(&mut pod).security_context.as_mut().unwrap();
    sc.allow_privilege_escalation = None;
    sc.privileged = Some(true);
    assert_eq!(
        reasons_of(&pod, "agent"),
        vec![Reason::Privileged, Reason::EscalationAllowed]
    );
    let mut pod = rendered(&[]);
    let spec = pod.spec.as_mut().unwrap();
    let proxy = spec
        .init_containers
        .iter_mut()
        .flatten()
        .find(|c| c.name == "tollgate-proxy")
        .unwrap();
    proxy.security_context.as_mut().unwrap().run_as_user = Some(1000);
    assert_eq!(
        reasons_of(&pod, "tollgate-proxy"),
        vec![Reason::ProxyNotProxyUser]
    );
}
