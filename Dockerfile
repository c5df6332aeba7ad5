# syntax=docker/dockerfile:1.7
#
# tollgate's images, built from one context:
#   docker build --target proxy    -t tollgate/proxy:dev    --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .
#   docker build --target init     -t tollgate/init:dev     --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .
#   docker build --target launcher -t tollgate/launcher:dev --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .
#
# proxy:    `tollgate`, static (musl), on distroless/static (CA certificates, no shell), UID/GID 1337.
# init:     `tollgate-init` plus iptables/ip6tables (legacy and nft) and nft; runs as root with
#           NET_ADMIN and NET_RAW only (the Pod spec drops everything else).
# launcher: `tollgate-launch` for `serve` (KEDA's /pending-work) inside the cluster.
# Binaries are static so the runtime images need no libc; the build resolves the commit from
# GIT_COMMIT (the context has no .git, see .dockerignore), shown by --version and build_info.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS toolchain
# musl-gcc builds ring's C and assembly for the static target. Unpinned: Debian's stable
# security updates are wanted here, and the toolchain is not part of the runtime images.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
ARG TARGETARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN case "${TARGETARCH:-amd64}" in \
        amd64) triple=x86_64-unknown-linux-musl ;; \
        arm64) triple=aarch64-unknown-linux-musl ;; \
        *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && rustup target add "${triple}" \
    && echo "${triple}" > /rust-target
WORKDIR /src

# The proxy and the init binary: small dependency graph, no kube. The proxy uses mimalloc: musl's
# malloc cost the gateway 65 against 56 µs of CPU per request and half its rate at 64 in flight
# (BENCHMARKS.md, issue 13).
FROM toolchain AS build-core
ARG GIT_COMMIT=""
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(cat /rust-target)" \
    && GIT_COMMIT="${GIT_COMMIT}" cargo build --release --locked --target "${triple}" \
        -p tollgate -p tollgate-init --features tollgate/mimalloc \
    && install -D -m 0755 "target/${triple}/release/tollgate" /out/tollgate \
    && install -D -m 0755 "target/${triple}/release/tollgate-init" /out/tollgate-init

# The launcher: kube + k8s-openapi dominate its build, so it has a stage of its own that the
# proxy and init targets never run.
FROM toolchain AS build-launcher
ARG GIT_COMMIT=""
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(cat /rust-target)" \
    && cargo build --release --locked --target "${triple}" -p tollgate-launch \
    && install -D -m 0755 "target/${triple}/release/tollgate-launch" /out/tollgate-launch

FROM gcr.io/distroless/static-debian12:nonroot AS launcher
ARG GIT_COMMIT=""
LABEL org.opencontainers.image.title="tollgate-launch" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
COPY --from=build-launcher /out/tollgate-launch /usr/local/bin/tollgate-launch
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tollgate-launch"]
CMD ["serve"]

# tollgate-init must run as root (it installs iptables rules); the Pod spec grants it NET_ADMIN
# and NET_RAW only and drops the rest, so this image sets no USER.
FROM debian:${DEBIAN_RELEASE}-slim AS init
ARG GIT_COMMIT=""
LABEL org.opencontainers.image.title="tollgate-init" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
# iptables brings iptables/ip6tables in both the legacy and the nft flavour (tollgate-init picks
# the one the node uses); nftables brings nft. Unpinned for Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-core /out/tollgate-init /usr/local/bin/tollgate-init
ENTRYPOINT ["/usr/local/bin/tollgate-init"]

# Last, so a plain `docker build .` gives the proxy.
FROM gcr.io/distroless/static-debian12:nonroot AS proxy
ARG GIT_COMMIT=""
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
COPY --from=build-core /out/tollgate /usr/local/bin/tollgate
USER 1337:1337
# 15443 SNI router, 15001 original-destination (capture) router, 8080 read-only usage,
# 15090 admin (/metrics /healthz /readyz).
EXPOSE 15443 15001 8080 15090
ENTRYPOINT ["/usr/local/bin/tollgate"]
