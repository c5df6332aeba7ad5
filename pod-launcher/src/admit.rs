//! The admission check on a task Pod: no container but the proxy can act as the proxy's UID
//! (1337), the one identity tollgate-init exempts from the redirect and the fence, nor as its
//! group. `submit` runs it on every Pod before creating it, and `check-pod` runs it on a Pod
//! spec written by hand.
//!
//! What is checked is the spec, which is all that can be checked: once the Pod runs,
//! tollgate-init (in its own container) cannot see which users the other containers run as. So a
//! container whose user or group is left to its image counts as able to be 1337, and so does
//! one that keeps CAP_SETUID (root with it can `setuid(1337)`) or may gain privileges (a setuid
//! binary owned by 1337 in its image).

use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};

use crate::spec::PROXY_ID;

/// The container that must be UID 1337: the proxy.
pub const PROXY_CONTAINER: &str = "tollgate-proxy";

/// Why a Pod would let something other than the proxy act as 1337 (or the proxy not be it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `runAsUser` set nowhere: the image's `USER` decides, and may be 1337.
    UserUnset,
    /// `runAsGroup` set nowhere: the image's `USER uid:gid` decides.
    GroupUnset,
    /// `runAsUser: 1337` on a container other than the proxy.
    ProxyUser,
    /// `runAsGroup: 1337` on a container other than the proxy.
    ProxyGroup,
    /// 1337 in the Pod's `fsGroup` or `supplementalGroups`: every container gets the group.
    ProxyGroupInPod,
    /// CAP_SETUID (or SETGID) not dropped, or added back: root could `setuid(1337)`.
    SetuidCapable,
    /// `allowPrivilegeEscalation` not `false`: a setuid binary could make it 1337.
    EscalationAllowed,
    /// `privileged: true`: every capability, and the rules are its to change.
    Privileged,
    /// `hostNetwork: true`: the Pod shares the node's network, where tollgate's rules do not live.
    HostNetwork,
    /// The proxy container does not run as UID 1337, so its traffic would be captured.
    ProxyNotProxyUser,
}

impl Reason {
    /// A short stable name, for messages and tests.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UserUnset => "run-as-user-unset",
            Reason::GroupUnset => "run-as-group-unset",
            Reason::ProxyUser => "proxy-uid",
            Reason::ProxyGroup => "proxy-gid",
            Reason::ProxyGroupInPod => "proxy-gid-in-pod",
            Reason::SetuidCapable => "setuid-capable",
            Reason::EscalationAllowed => "privilege-escalation",
            Reason::Privileged => "privileged",
            Reason::HostNetwork => "host-network",
            Reason::ProxyNotProxyUser => "proxy-not-uid-1337",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Reason::UserUnset => "runAsUser is not set, so the image's USER (maybe 1337) decides",
            Reason::GroupUnset => {
                "runAsGroup is not set, so the image's USER uid:gid (maybe :1337) decides"
            }
            Reason::ProxyUser => "runs as UID 1337, the proxy's, which the redirect exempts",
            Reason::ProxyGroup => "runs as GID 1337, the proxy's group",
            Reason::ProxyGroupInPod => "gives every container the proxy's group 1337",
            Reason::SetuidCapable => {
                "keeps CAP_SETUID/CAP_SETGID (drop ALL, add neither), so it can setuid(1337)"
            }
            Reason::EscalationAllowed => {
                "allowPrivilegeEscalation is not false, so a setuid binary can make it 1337"
            }
            Reason::Privileged => "is privileged: it can become anyone and rewrite the rules",
            Reason::HostNetwork => "uses the node's network, where tollgate's rules do not apply",
            Reason::ProxyNotProxyUser => {
                "the proxy must run as UID 1337, the one UID tollgate-init exempts"
            }
        }
    }
}

/// One problem: where (a container, or `pod` for Pod-wide fields) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The container's name, or `pod`.
    pub container: String,
    /// Why.
    pub reason: Reason,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.container,
            self.reason.explain(),
            self.reason.as_str()
        )
    }
}

/// A Pod that failed the check; every finding is listed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pod {pod} would let a container act as the proxy's UID/GID 1337:\n  {}",
    .findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct Refused {
    /// The Pod's name.
    pub pod: String,
    /// What is wrong, in container order.
    pub findings: Vec<Finding>,
}

/// Checks `pod`; `Err` lists every finding.
pub fn check(pod: &Pod) -> Result<(), Refused> {
    let findings = findings(pod);
    if findings.is_empty() {
        Ok(())
    } else {
        Err(Refused {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            findings,
        })
    }
}

/// Every finding, Pod-wide ones first, then per container (init containers first).
pub fn findings(pod: &Pod) -> Vec<Finding> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut pod_finding = |reason| {
        out.push(Finding {
            container: "pod".to_owned(),
            reason,
        });
    };
    if spec.host_network == Some(true) {
        pod_finding(Reason::HostNetwork);
    }
    let in_pod_groups = pod_sc.fs_group == Some(PROXY_ID)
        || pod_sc
            .supplemental_groups
            .iter()
            .flatten()
            .any(|g| *g == PROXY_ID);
    if in_pod_groups {
        pod_finding(Reason::ProxyGroupInPod);
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        for reason in container_reasons(c, &pod_sc) {
            out.push(Finding {
                container: c.name.clone(),
                reason,
            });
        }
    }
    out
}

fn container_reasons(c: &Container, pod: &PodSecurityContext) -> Vec<Reason> {
    let sc = c.security_context.clone().unwrap_or_default();
    // The container's own field wins over the Pod's, as in the kubelet.
    let user = sc.run_as_user.or(pod.run_as_user);
    let group = sc.run_as_group.or(pod.run_as_group);
    let mut out = Vec::new();
    if c.name == PROXY_CONTAINER {
        if user != Some(PROXY_ID) {
            out.push(Reason::ProxyNotProxyUser);
        }
    } else {
        match user {
            None => out.push(Reason::UserUnset),
            Some(PROXY_ID) => out.push(Reason::ProxyUser),
            Some(_) => {}
        }
        match group {
            None => out.push(Reason::GroupUnset),
            Some(PROXY_ID) => out.push(Reason::ProxyGroup),
            Some(_) => {}
        }
    }
    if sc.privileged == Some(true) {
        out.push(Reason::Privileged);
    }
    if setuid_capable(&sc) {
        out.push(Reason::SetuidCapable);
    }
    if sc.allow_privilege_escalation != Some(false) {
        out.push(Reason::EscalationAllowed);
    }
    out
}

/// Whether the container may hold CAP_SETUID or CAP_SETGID: not dropped (ALL or by name), or
/// added back. Names are compared as the runtime does, without a `CAP_` prefix, any case.
fn setuid_capable(sc: &SecurityContext) -> bool {
    let caps = sc.capabilities.clone().unwrap_or_default();
    let norm = |c: &String| {
        let c = c.to_ascii_uppercase();
        c.strip_prefix("CAP_").map(str::to_owned).unwrap_or(c)
    };
    let dropped: Vec<String> = caps.drop.iter().flatten().map(norm).collect();
    let added: Vec<String> = caps.add.iter().flatten().map(norm).collect();
    let risky = ["SETUID", "SETGID"];
    let all_dropped = dropped.iter().any(|c| c == "ALL");
    risky.iter().any(|r| {
        let kept = !all_dropped && !dropped.iter().any(|c| c == r);
        let regained = added.iter().any(|c| c == r || c == "ALL");
        kept || regained
    })
}

#[cfg(test)]
mod tests;
