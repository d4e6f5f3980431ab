#!/usr/bin/env bash
# End-to-end suite: invoke-guard in front of real, unmodified InvokeAI servers.
#
#   tests/e2e/run.sh [--direct] [VERSION...]        (default versions: 6.12.0 6.13.8 6.14.2)
#
# For each VERSION:
#   1. scripts/invokeai/install.sh VERSION          (cached venv; a fast no-op when installed)
#   2. scripts/invokeai/start.sh on a free loopback port with a fresh root
#      ${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/run/e2e-VERSION
#   3. tests/e2e/scenario.py builds users/boards/images/... talking to InvokeAI DIRECTLY
#   4. starts the guard in front of it ($GUARD_BIN serve ...) and waits for GET /readyz on its admin port
#   5. tests/e2e/matrix.py runs the cross-user matrix THROUGH the guard
#   6. tests/e2e/sockets.py drives real python-socketio clients through the guard (every connection style,
#      every event type, room injection, revocation; its client venv comes from tests/e2e/sockets-venv.sh)
#   7. tests/e2e/models.py: model access and quotas through a second guard started with the groups file
#      tests/e2e/models-groups.toml (tiny models installed through InvokeAI's own install API; MODELS=0 skips it)
#   8. stops the guards and InvokeAI by PID (also on failure or Ctrl-C)
# --direct skips the guard and runs the matrix and the socket suite against InvokeAI itself (shows what the guard
# must close; expected to fail); before the matrix it runs tests/e2e/differentials.py (how Starlette itself reads
# ambiguous multipart bodies: evidence printed to differentials.out, never a failure).
#
# Env: GUARD_BIN (default target/release/invoke-guard), ROUTES (default routes.toml),
#      E2E_RUN_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/run), MATRIX_ARGS (extra
#      arguments for matrix.py, e.g. "-v" or "-k 'bob:*'"), SOCKETS_ARGS (extra arguments for sockets.py,
#      e.g. "-v"), SOCKETS=0 (skip the socket suite; it runs by default), MODELS=0 (skip the model suite),
#      MODELS_ARGS (e.g. "-v"), GUARD_READY_TIMEOUT (default 30 s).
# Per-version logs and the reports stay in the run dir: server.log, guard.log, manifest.json,
# matrix-report.json, matrix.out, sockets-report.json, sockets.out, sockets/sockets-frames.jsonl, models-guard.log,
# models.out, models-report.json, models/ (the model files).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E="$REPO/tests/e2e"
INV="$REPO/scripts/invokeai"
RUN_BASE="${E2E_RUN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/run}"
GUARD_BIN="${GUARD_BIN:-$REPO/target/release/invoke-guard}"
ROUTES="${ROUTES:-$REPO/routes.toml}"
READY_TIMEOUT="${GUARD_READY_TIMEOUT:-30}"

DIRECT=0
VERSIONS=()
for a in "$@"; do
  case "$a" in
    --direct) DIRECT=1 ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    *) VERSIONS+=("$a") ;;
  esac
done
[[ ${#VERSIONS[@]} -gt 0 ]] || VERSIONS=(6.12.0 6.13.8 6.14.2)

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# ---- prerequisites (missing ones are errors, never silent skips)
for tool in flock sha256sum awk; do command -v "$tool" >/dev/null || die "missing tool: $tool"; done
if [[ $DIRECT == 0 ]]; then
  [[ -x "$GUARD_BIN" ]] || die "guard binary $GUARD_BIN not found; build it with 'cargo build --release' in $REPO or set GUARD_BIN"
  [[ -f "$ROUTES" ]] || die "route table $ROUTES not found (set ROUTES=...)"
fi
mkdir -p "$RUN_BASE"
SOCKETS="${SOCKETS:-1}"
if [[ $SOCKETS == 1 ]]; then
  # python-socketio[client] + websocket-client, pinned, in a small cached venv (fast no-op when present)
  SIO_VENV="$("$E2E/sockets-venv.sh" | tail -1)" || die "could not install the Socket.IO client (tests/e2e/sockets-venv.sh)"
  SIO_PY="$SIO_VENV/bin/python"
fi

# shellcheck source=tests/e2e/proc.sh
source "$E2E/proc.sh"
ROOT=""
cleanup() {
  local rc=$?
  stop_processes
  if [[ -n "$ROOT" ]]; then "$INV/stop.sh" "$ROOT" || true; fi
  ROOT=""
  return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

http_status() {  # URL -> HTTP status (000 when nothing answers); browser-like Accept-Encoding, one-shot (no cookies)
  "$PY" - "$1" <<'PYEOF'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Accept-Encoding": "gzip, deflate, br"})  # like a browser
try:
    with urllib.request.urlopen(req, timeout=2) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PYEOF
}


SUMMARY=()
overall=0
for V in "${VERSIONS[@]}"; do
  log "=== InvokeAI $V ==="
  t=$(date +%s.%N)
  run_child "$INV/install.sh" "$V" > "$RUN_BASE/.install-$V.out" || die "install of invokeai $V failed"
  VENV="$(tail -1 "$RUN_BASE/.install-$V.out")"
  PY="$VENV/bin/python"
  t_install=$(secs "$t")

  RUNDIR="$RUN_BASE/e2e-$V"
  ROOT="$RUNDIR/root"
  mkdir -p "$RUNDIR"
  rm -rf "$RUNDIR/guard" "$RUNDIR/manifest.json" "$RUNDIR/matrix-report.json" "$RUNDIR/guard.log" \
    "$RUNDIR/differentials.out" "$RUNDIR/differentials.json" "$RUNDIR/sockets" "$RUNDIR/sockets.out" \
    "$RUNDIR/sockets-report.json" "$RUNDIR/models" "$RUNDIR/models.out" "$RUNDIR/models-report.json" \
    "$RUNDIR/models-guard.log" "$RUNDIR/models-guard"
  UPORT="$(free_port)"
  t=$(date +%s.%N)
  run_child "$INV/start.sh" "$V" "$UPORT" "$ROOT" > "$RUNDIR/start.out" \
    || die "InvokeAI $V did not start (log: $ROOT/server.log)"
  log "$(cat "$RUNDIR/start.out")"
  t_start=$(secs "$t")

  t=$(date +%s.%N)
  run_child "$PY" "$E2E/scenario.py" --base "http://127.0.0.1:$UPORT" --db "$ROOT/databases/invokeai.db" --version "$V" \
    --out "$RUNDIR/manifest.json" || die "scenario failed on InvokeAI $V (log: $ROOT/server.log)"
  t_scenario=$(secs "$t")

  t_guard=0
  if [[ $DIRECT == 1 ]]; then
    BASE="http://127.0.0.1:$UPORT"
    mflags=(--direct)
    # evidence only (how InvokeAI itself parses ambiguous multipart bodies); never fails the run
    run_child "$PY" "$E2E/differentials.py" --base "$BASE" --manifest "$RUNDIR/manifest.json" \
      --out "$RUNDIR/differentials.json" > "$RUNDIR/differentials.out" 2>&1 || true
    sed 's/^/[e2e differentials] /' "$RUNDIR/differentials.out" >&2 || true
  else
    GPORT="$(free_port)"
    APORT="$(free_port)"
    mkdir -p "$RUNDIR/guard"
    t=$(date +%s.%N)
    # The operator's step when deploying over an existing InvokeAI (README, "Owner records on 6.12"): the scenario's
    # 6.12 workflows and presets predate the guard, so its new ledger adopts them (a no-op where nothing is unowned).
    ( cd "$REPO" && "$GUARD_BIN" ledger adopt-existing --db "$ROOT/databases/invokeai.db" --routes "$ROUTES" \
      --ledger "$RUNDIR/guard/ledger.db" ) > "$RUNDIR/ledger-adopt.out" 2>&1 \
      || { cat "$RUNDIR/ledger-adopt.out" >&2; die "invoke-guard ledger adopt-existing failed"; }
    log "$(grep -v ' WARN ' "$RUNDIR/ledger-adopt.out" | tail -1)"
    # (run from the repo root, where the guard finds config/invoke-guard.toml; the flags override it)
    ( cd "$REPO" && exec "$GUARD_BIN" serve --listen "127.0.0.1:$GPORT" --upstream "http://127.0.0.1:$UPORT" \
      --db "$ROOT/databases/invokeai.db" --routes "$ROUTES" --ledger "$RUNDIR/guard/ledger.db" \
      --admin-listen "127.0.0.1:$APORT" > "$RUNDIR/guard.log" 2>&1 < /dev/null ) &
    GUARD_PID=$!
    wait_guard_ready "the guard" "$APORT" "$RUNDIR/guard.log"
    t_guard=$(secs "$t")
    log "guard pid=$GUARD_PID listening on 127.0.0.1:$GPORT (admin 127.0.0.1:$APORT), ready in ${t_guard}s"
    BASE="http://127.0.0.1:$GPORT"
    mflags=(--upstream "http://127.0.0.1:$UPORT")
  fi

  t=$(date +%s.%N)
  rc=0
  # shellcheck disable=SC2086
  eval "margs=(${MATRIX_ARGS:-})"
  run_child "$PY" "$E2E/matrix.py" --manifest "$RUNDIR/manifest.json" --base "$BASE" "${mflags[@]}" \
    --report "$RUNDIR/matrix-report.json" --out "$RUNDIR/matrix.out" "${margs[@]}" || rc=$?
  t_matrix=$(secs "$t")
  [[ $rc == 0 ]] || overall=1
  SUMMARY+=("$V: $(tail -1 "$RUNDIR/matrix.out" 2>/dev/null || echo 'matrix produced no result') (install ${t_install}s, start ${t_start}s, scenario ${t_scenario}s, guard ${t_guard}s, matrix ${t_matrix}s)")

  if [[ $SOCKETS == 1 ]]; then
    # After the matrix, on the same server: sockets.py creates, deactivates and demotes users (bob is restored).
    t=$(date +%s.%N)
    rc=0
    sflags=(--upstream "http://127.0.0.1:$UPORT")
    if [[ $DIRECT == 1 ]]; then sflags+=(--direct); else sflags+=(--metrics "http://127.0.0.1:$APORT/metrics"); fi
    # shellcheck disable=SC2086
    eval "sargs=(${SOCKETS_ARGS:-})"
    run_child timeout -k 10 1200 "$SIO_PY" "$E2E/sockets.py" --manifest "$RUNDIR/manifest.json" --base "$BASE" \
      "${sflags[@]}" --db "$ROOT/databases/invokeai.db" --workdir "$RUNDIR/sockets" \
      --report "$RUNDIR/sockets-report.json" --out "$RUNDIR/sockets.out" "${sargs[@]}" || rc=$?
    t_sockets=$(secs "$t")
    [[ $rc == 0 ]] || overall=1
    SUMMARY+=("$V sockets: $(tail -1 "$RUNDIR/sockets.out" 2>/dev/null || echo "sockets.py produced no result (exit $rc)") (${t_sockets}s)")
  fi
  if [[ "${MODELS:-1}" == 1 && $DIRECT == 0 ]]; then
    # Model access and quotas: a guard of its own with the suite's groups file, on the same server (the matrix's
    # guard is stopped first; the suite creates its own users and models).
    stop_processes
    MPORT="$(free_port)"
    MAPORT="$(free_port)"
    mkdir -p "$RUNDIR/models-guard"
    ( cd "$REPO" && exec "$GUARD_BIN" serve --listen "127.0.0.1:$MPORT" --upstream "http://127.0.0.1:$UPORT" \
      --db "$ROOT/databases/invokeai.db" --routes "$ROUTES" --ledger "$RUNDIR/models-guard/ledger.db" \
      --groups "$E2E/models-groups.toml" --admin-listen "127.0.0.1:$MAPORT" > "$RUNDIR/models-guard.log" 2>&1 < /dev/null ) &
    GUARD_PID=$!
    wait_guard_ready "the models guard" "$MAPORT" "$RUNDIR/models-guard.log"
    t=$(date +%s.%N)
    rc=0
    run_child "$PY" "$E2E/models.py" --base "http://127.0.0.1:$MPORT" --upstream "http://127.0.0.1:$UPORT" \
      --manifest "$RUNDIR/manifest.json" --db "$ROOT/databases/invokeai.db" --workdir "$RUNDIR/models" \
      --report "$RUNDIR/models-report.json" --out "$RUNDIR/models.out" ${MODELS_ARGS:-} || rc=$?
    t_models=$(secs "$t")
    [[ $rc == 0 ]] || overall=1
    SUMMARY+=("$V models: $(tail -1 "$RUNDIR/models.out" 2>/dev/null || echo "models.py produced no result (exit $rc)") (${t_models}s)")
  fi
  cleanup || true
done

log "summary:"
for s in "${SUMMARY[@]}"; do log "  $s"; done
exit $overall
