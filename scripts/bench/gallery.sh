#!/usr/bin/env bash
# A 10 000-image gallery on a real InvokeAI behind the guard vs direct (docs/benchmarks.md, "Lists").
#
#   scripts/bench/gallery.sh [VERSION]        default 6.12.0 (the version whose lists the guard recomputes)
#   IMAGES=10000 REQUESTS=200 scripts/bench/gallery.sh 6.12.0
#
# Installs (cached) and starts a fresh InvokeAI on a free loopback port with a root under
# ${E2E_RUN_DIR:-$HOME/.cache/invoke-guard/run}/gallery-VERSION, builds the guard (release) if needed,
# runs scripts/bench/gallery.py and stops everything. Loopback only; takes a few minutes (the uploads).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
V="${1:-6.12.0}"
INV="$REPO/scripts/invokeai"
RUN="${E2E_RUN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/run}/gallery-$V"
GUARD_BIN="${GUARD_BIN:-$REPO/target/release/invoke-guard}"
log() { printf '[gallery %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[[ -x "$GUARD_BIN" ]] || (cd "$REPO" && cargo build --release --quiet)
VENV="$("$INV/install.sh" "$V" | tail -1)"
PY="$VENV/bin/python"
# shellcheck source=tests/e2e/proc.sh
source "$REPO/tests/e2e/proc.sh"
ROOT="$RUN/root"
cleanup() { stop_processes; "$INV/stop.sh" "$ROOT" >/dev/null 2>&1 || true; }
trap cleanup EXIT
rm -rf "$RUN"; mkdir -p "$RUN"
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
UPORT="$(free_port)"; GPORT="$(free_port)"; APORT="$(free_port)"
run_child "$INV/start.sh" "$V" "$UPORT" "$ROOT" >&2
( cd "$REPO" && INVOKE_GUARD_LOG=warn exec "$GUARD_BIN" serve --listen "127.0.0.1:$GPORT" \
    --upstream "http://127.0.0.1:$UPORT" --db "$ROOT/databases/invokeai.db" --routes "$REPO/routes.toml" --ledger "$RUN/ledger.db" \
    --admin-listen "127.0.0.1:$APORT" > "$RUN/guard.log" 2>&1 < /dev/null ) &
GUARD_PID=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$APORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
log "InvokeAI $V on :$UPORT, guard on :$GPORT"
run_child "$PY" "$REPO/scripts/bench/gallery.py" --direct "http://127.0.0.1:$UPORT" --guard "http://127.0.0.1:$GPORT" \
  --images "${IMAGES:-10000}" --requests "${REQUESTS:-200}"
