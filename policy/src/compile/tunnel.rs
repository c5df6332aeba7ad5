//! `[tunnel]`: which hosts are tunnelled without interception, and the tunnel timeouts.

use std::time::Duration;

use crate::error::{PolicyError, Source};
use crate::host::HostList;
use crate::policy::TunnelSettings;
use crate::raw::RawTunnel;

/// Default upstream connect timeout.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default idle timeout: long enough for a slow package download to stall and resume.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Why `*` cannot be allow-listed: that would make the agent phase as open as verification.
const BARE_STAR: &str = "a bare \"*\" is not allowed in the agent-phase allow list; name hosts or use \"*.example.com\"";

/// The compiled `[tunnel]` table.
pub(super) struct Tunnel {
    pub allow: HostList,
    pub deny: HostList,
    pub settings: TunnelSettings,
}

/// Compiles `[tunnel]`; the deny list may hold a bare `*` (a closed verification phase).
pub(super) fn compile(src: Source<'_>, raw: &RawTunnel) -> Result<Tunnel, PolicyError> {
    let allow = super::host_list(src, "tunnel.allow", &raw.allow, Some(BARE_STAR))?;
    let deny = super::host_list(src, "tunnel.deny", &raw.deny, None)?;
    let connect_timeout = super::duration(
        src,
        "tunnel.connect_timeout",
        raw.connect_timeout.as_ref(),
        DEFAULT_CONNECT_TIMEOUT,
    )?;
    let idle_timeout = super::duration(
        src,
        "tunnel.idle_timeout",
        raw.idle_timeout.as_ref(),
        DEFAULT_IDLE_TIMEOUT,
    )?;
    Ok(Tunnel {
        allow,
        deny,
        settings: TunnelSettings {
            connect_timeout,
            idle_timeout,
        },
    })
}
