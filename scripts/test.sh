#!/usr/bin/env bash
# Runs every test tollgate has: unit, in-process integration, and end to end (network namespaces,
# iptables, curl, the real binaries). Run as root on a fresh Debian/Ubuntu machine it first
# installs the system packages those tests need (iproute2, iptables, curl, openssl, dig); as another user the root-only tests skip (set
# TOLLGATE_REQUIRE_ROOT_TESTS=1 to make them fail instead, as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
command -v dig >/dev/null || need+=(bind9-dnsutils)  # the DNS end-to-end tests' agent
command -v getent >/dev/null || need+=(libc-bin)
command -v perl >/dev/null || need+=(perl)  # the port-squatting tests' squatter
command -v setpriv >/dev/null || need+=(util-linux)  # tollgate run's rootless test drops to 65534
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing test dependencies: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing test dependencies: ${need[*]} (install them, or run as root to install them)" >&2
  fi
fi

exec cargo test --workspace --locked "$@"
