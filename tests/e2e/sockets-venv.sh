#!/usr/bin/env bash
# Install the Socket.IO client of tests/e2e/sockets.py into a small cached venv outside the repo.
#
#   tests/e2e/sockets-venv.sh            prints the venv's path as the last line on stdout
#
# venv: ${SOCKETS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs/socketio-client}
# pins: tests/e2e/requirements-sockets.txt (python-socketio[client], websocket-client, requests and
#       their dependencies, installed with --no-deps so the resolution is exactly that file).
# Idempotent: a venv stamped with the pin file's sha256 whose imports work is a fast no-op; anything
# else is rebuilt. Needs python 3.9+ with venv and ensurepip, and PyPI.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQ="$HERE/requirements-sockets.txt"
VENV="${SOCKETS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs/socketio-client}"
STAMP="$VENV/.invoke-guard-req.sha256"

log() { printf '[sockets-venv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

sum="$(sha256sum "$REQ" | cut -d' ' -f1)"
works() {
  [[ -x "$VENV/bin/python" ]] || return 1
  "$VENV/bin/python" -c 'import socketio, engineio, websocket, requests
assert socketio.Client and websocket.create_connection' >/dev/null 2>&1
}
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$sum" ]] && works; then
  log "ok: $VENV"
  echo "$VENV"
  exit 0
fi

PY=""
for c in "${PYTHON:-}" python3 python3.12 python3.11; do
  [[ -n "$c" ]] && command -v "$c" >/dev/null 2>&1 || continue
  if "$c" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 9)' >/dev/null 2>&1; then PY="$c"; break; fi
done
[[ -n "$PY" ]] || die "need python >= 3.9 with venv and ensurepip (set PYTHON=...)"

mkdir -p "$(dirname "$VENV")"
exec 9> "$VENV.lock"
flock 9
rm -rf "$VENV"
log "creating $VENV with $PY"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$REQ" >&2 \
  || die "pip install -r $REQ failed"
works || die "the installed client does not import"
echo "$sum" > "$STAMP"
log "installed: $("$VENV/bin/python" -m pip freeze --disable-pip-version-check | tr '\n' ' ')"
echo "$VENV"
