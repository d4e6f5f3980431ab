#!/usr/bin/env bash
# Install what the end-to-end tests need, idempotently (a second run is a fast no-op):
#   - Debian packages: curl, python3-venv (InvokeAI venvs), chromium + chromium-driver (web UI test)
#   - InvokeAI 6.12.0, 6.13.8 and 6.14.2 venvs (scripts/invokeai/install.sh; cached outside the repo)
#   - the Socket.IO client venv of the socket suite (tests/e2e/sockets-venv.sh; cached outside the repo)
#   - npm packages for the browser test (tests/e2e/browser; node_modules is git-ignored)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v flock >/dev/null || need_apt+=(util-linux)
if [[ -d "$REPO/tests/e2e/browser" ]]; then
  [[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
  [[ -x /usr/bin/chromedriver ]] || need_apt+=(chromium-driver)
  command -v node >/dev/null || need_apt+=(nodejs npm)
fi
if (( ${#need_apt[@]} )); then
  [[ $(id -u) == 0 ]] || { echo "setup: need root to apt-get install ${need_apt[*]}" >&2; exit 2; }
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

for v in 6.12.0 6.13.8 6.14.2; do
  "$REPO/scripts/invokeai/install.sh" "$v" >/dev/null
done
# the real Socket.IO client of tests/e2e/sockets.py (python-socketio[client] + websocket-client, pinned)
"$REPO/tests/e2e/sockets-venv.sh" >/dev/null

if [[ -f "$REPO/tests/e2e/browser/package.json" ]]; then
  ( cd "$REPO/tests/e2e/browser" && { [[ -d node_modules ]] && npm ls --silent >/dev/null 2>&1 || npm ci --no-audit --no-fund --silent; } )
fi
echo "setup: test prerequisites ready"
