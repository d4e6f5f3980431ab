#!/usr/bin/env bash
# Validate the deployment artefacts without a container engine or a cluster:
#   - deploy/kubernetes/*.yaml against the Kubernetes OpenAPI schemas (PyPI kubernetes-validate,
#     strict: unknown fields are errors), plus the properties the README promises (probes,
#     runAsNonRoot, readOnlyRootFilesystem, read-only database mount, Service on the guard's port);
#   - deploy/compose.yaml against the Compose JSON schema shipped in docker-compose's wheel (only
#     the schema file is used), plus its promises (InvokeAI on loopback, the guard in its network
#     namespace, databases/ read-only, a ledger volume, read-only root filesystem).
#
#   scripts/deploy/validate.sh
#
# Tools are installed idempotently into a cached venv outside the repo:
#   ${INVOKEAI_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs}/deploy-validate
# Prints one line 'PASS n/N deploy checks' (or FAIL) and exits non-zero on any failure.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENVS="${INVOKEAI_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs}"
VENV="$VENVS/deploy-validate"
K8S_VALIDATE_VERSION=1.37.0
COMPOSE_WHEEL_VERSION=1.29.2
K8S_VERSION="${K8S_VERSION:-1.33}"
STAMP="$VENV/.stamp-$K8S_VALIDATE_VERSION-$COMPOSE_WHEEL_VERSION"

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

cd "$REPO"
exec "$VENV/bin/python" scripts/deploy/check_deploy.py \
  --kubernetes-version "$K8S_VERSION" \
  --kubernetes-validate "$VENV/bin/kubernetes-validate" \
  --compose-schema "$VENV/compose_spec.json" \
  deploy/compose.yaml deploy/kubernetes
