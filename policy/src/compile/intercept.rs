//! `[intercept]`: the hosts whose TLS the LLM gateway terminates. Budget, model and pricing keys
//! will join `hosts` here.

use crate::error::{PolicyError, Source};
use crate::host::HostList;
use crate::raw::RawIntercept;

/// Why `*` cannot be intercepted: the gateway would have to terminate TLS for every host.
const BARE_STAR: &str = "a bare \"*\" is not allowed in the intercept list; name the llm api hosts, e.g. \"openrouter.ai\"";

/// Compiles `[intercept]` into the list of intercepted host patterns.
pub(super) fn compile(src: Source<'_>, raw: &RawIntercept) -> Result<HostList, PolicyError> {
    super::host_list(src, "intercept.hosts", &raw.hosts, Some(BARE_STAR))
}
