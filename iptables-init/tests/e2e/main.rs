//! End-to-end tests of `tollgate-init` as root, each in its own network namespace with TEST-NET
//! addresses on a veth pair (nothing is sent outside it). Without root they print `SKIPPED`;
//! with `TOLLGATE_REQUIRE_ROOT_TESTS=1` (CI) they fail instead.
//!
//! - [`golden`]: the generated `iptables-restore` input against `tests/golden/` (no root needed).
//! - [`install`]: the lifecycle on both backends, dry runs, detection, failure exit codes.
//! - [`security`]: a capability-less root process cannot setuid its way out of the redirect.
//! - [`pod`]: the whole Pod: tollgate as UID 1337, curl as another UID.

#![allow(clippy::unwrap_used)]

mod golden;
mod install;
mod netns;
mod pod;
mod security;
