#!/usr/bin/env bash
# End-to-end, part 4: the real InvokeAI web UI works through the guard (headless Chromium).
#
#   tests/e2e/browser/run.sh [VERSION]            (default 6.14.2; scripts/test.sh runs 6.12.0, 6.13.8 and 6.14.2)
#
#   1. scripts/invokeai/install.sh VERSION (cached venv), scripts/invokeai/start.sh on a free loopback port with a
#      fresh root ${E2E_RUN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/run}/browser-VERSION/root
#   2. setup.py seeds it DIRECTLY: admin (POST /api/v1/auth/setup), alice, carol (alice's twin), bob; each with a
#      private board holding one image, uncategorized images and a private workflow
#   3. starts the guard in front of it ($GUARD_BIN serve ...; ready when GET /readyz on its admin port is 200)
#   4. flow.mjs --mode direct: the UI flow as carol straight against InvokeAI (baseline: what the server itself
#      answers), then flow.mjs --mode guard: the same flow as alice THROUGH THE GUARD (login form, gallery with
#      her images and none of bob's, her board, upload via the file chooser, new board, workflow library,
#      Socket.IO, logout + reload of /login), recording every response, toast and socket frame. The flow also
#      uploads into the new board, creates/saves/reopens/edits a workflow, opens the Settings and About dialogs and,
#      in guard mode, checks as bob (through the guard) that none of what alice made is visible to him. The UI
#      differences between 6.12, 6.13 and 6.14 are a small table in flow.mjs (UI, XFAIL, EXPECTED_STRICTER).
#   5. models.mjs (MODELS=0 skips it): a guard started with models-groups.toml; tiny models installed through
#      InvokeAI's own install API (models_setup.py); as dana (interns): the main model and LoRA pickers offer her
#      models and not the restricted ones, the batch the UI builds is accepted, and over her quota the UI's error
#      toast shows the guard's message (the UI-built batch is kept as webui-enqueue.json)
#   6. stops the guard and InvokeAI by PID on every exit path
# The last line is `PASS n/N leaks=L false_denies=F` (or FAIL ...); exit status 0 only on PASS.
# A guard denial (401/403/404 with a JSON {"detail"} body and an outcome=deny decision-log line) counts as a
# false deny unless InvokeAI itself refused the same (normalized) request in the baseline run, or refuses it when
# replayed straight to it with the same credentials (GET/HEAD), or it is a listed deliberate difference (flow.mjs).
# Artifact: tests/e2e/artifacts/gallery-VERSION.png (the gallery after login, through the guard). Logs, reports
# and step screenshots stay in the run dir: root/server.log, guard.log, manifest.json, {direct,guard}-report.json
# (every response: URL, status, JSON-detail flag, guard decision, classification), {direct,guard}-flow.out, shots/.
#
# Env: GUARD_BIN (default target/release/invoke-guard; built with `cargo build --release` when missing),
#      ROUTES (default routes.toml), E2E_RUN_DIR, CHROMIUM (default /usr/bin/chromium),
#      GUARD_READY_TIMEOUT (default 30 s), SOCKET_GZIP_WORKAROUND (default 1; the direct baseline run only, see
#      flow.mjs: InvokeAI 6.14.2 answers 500 to Engine.IO polling requests that accept gzip, which every browser
#      sends; the guard drops Accept-Encoding on Socket.IO requests, so the guard run uses none).
# Prerequisites: node >= 20 + npm (playwright-core from package-lock.json, no browser download), Debian's
# chromium (installed with apt-get when missing and running as root), python 3.11/3.12 for InvokeAI.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
INV="$REPO/scripts/invokeai"
V="${1:-6.14.2}"
RUN_BASE="${E2E_RUN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/run}"
RUNDIR="$RUN_BASE/browser-$V"
ROOT="$RUNDIR/root"
ARTIFACTS="$REPO/tests/e2e/artifacts"
ROUTES="${ROUTES:-$REPO/routes.toml}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
READY_TIMEOUT="${GUARD_READY_TIMEOUT:-30}"

case "$V" in -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}"; exit 0 ;; -*) echo "run.sh: unknown option $V" >&2; exit 2 ;; esac

log() { printf '[browser-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
T_ALL=$(date +%s.%N)

# ---------------------------------------------------------------- prerequisites (errors, never skips)
for tool in awk flock sha256sum; do command -v "$tool" >/dev/null || die "missing tool: $tool"; done
command -v node >/dev/null || die "node not found (Debian: apt-get install nodejs npm; playwright-core needs node >= 20)"
command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
(( node_major >= 20 )) || die "node $(node --version) is too old; playwright-core needs node >= 20"
if [[ ! -x "$CHROMIUM" ]]; then
  [[ "$CHROMIUM" == /usr/bin/chromium ]] || die "CHROMIUM=$CHROMIUM is not an executable"
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "Debian's chromium is missing; apt-get update && apt-get install chromium chromium-driver"
    apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2 \
      || die "apt-get install chromium chromium-driver failed"
  fi
  [[ -x "$CHROMIUM" ]] || die "$CHROMIUM not found: install Debian's browser with 'apt-get update && apt-get install chromium chromium-driver' (as root)"
fi
if [[ ! -f "$HERE/node_modules/playwright-core/package.json" ]] \
   || ! ( cd "$HERE" && npm ls --silent playwright-core >/dev/null 2>&1 ); then
  log "npm ci in tests/e2e/browser (playwright-core; no browser download)"
  ( cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent >&2 ) \
    || die "npm ci failed in $HERE (needs the npm registry)"
fi
[[ -f "$ROUTES" ]] || die "route table $ROUTES not found (set ROUTES=...)"
if [[ -z "${GUARD_BIN:-}" ]]; then
  GUARD_BIN="$REPO/target/release/invoke-guard"
  if [[ ! -x "$GUARD_BIN" ]]; then
    command -v cargo >/dev/null || die "no $GUARD_BIN and no cargo to build it"
    log "building the guard: cargo build --release"
    ( cd "$REPO" && cargo build --release --locked >&2 ) || die "cargo build --release failed"
  fi
fi
[[ -x "$GUARD_BIN" ]] || die "guard binary $GUARD_BIN not found (cargo build --release, or set GUARD_BIN)"

# ---------------------------------------------------------------- cleanup on every exit path
# shellcheck source=tests/e2e/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../proc.sh"
STARTED_ROOT=""
cleanup() {
  local rc=$?
  stop_processes
  if [[ -n "$STARTED_ROOT" ]]; then "$INV/stop.sh" "$STARTED_ROOT" >&2 || true; fi
  STARTED_ROOT=""
  return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- InvokeAI
log "=== InvokeAI $V: web UI through the guard ==="
mkdir -p "$RUN_BASE"
t=$(date +%s.%N)
run_child "$INV/install.sh" "$V" > "$RUN_BASE/.browser-install-$V.out" || die "install of invokeai $V failed"
VENV="$(tail -1 "$RUN_BASE/.browser-install-$V.out")"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || die "install.sh printed '$VENV', which has no bin/python"
t_install=$(secs "$t")

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
http_status() {  # URL [Accept-Encoding, default like a browser] -> HTTP status (000 when nothing answers); one-shot probe, no cookies
  "$PY" - "$1" "${2:-gzip, deflate, br}" <<'PYEOF'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Accept-Encoding": sys.argv[2]})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PYEOF
}

mkdir -p "$RUNDIR" "$ARTIFACTS"
rm -rf "$RUNDIR/guard" "$RUNDIR/shots" "$RUNDIR"/*.json "$RUNDIR"/*.out "$RUNDIR/guard.log" "$RUNDIR"/profile-* \
  "$ARTIFACTS/gallery-$V.png" "$ARTIFACTS/browser-failure-$V.png"
UPORT="$(free_port)"
t=$(date +%s.%N)
STARTED_ROOT="$ROOT"
run_child "$INV/start.sh" "$V" "$UPORT" "$ROOT" > "$RUNDIR/start.out" || die "InvokeAI $V did not start (log: $ROOT/server.log)"
log "$(tail -1 "$RUNDIR/start.out")"
t_start=$(secs "$t")
UPSTREAM="http://127.0.0.1:$UPORT"

t=$(date +%s.%N)
run_child "$PY" "$HERE/setup.py" --base "$UPSTREAM" --version "$V" --out "$RUNDIR/manifest.json" \
  || die "seeding InvokeAI $V failed (log: $ROOT/server.log)"
t_setup=$(secs "$t")

# ---------------------------------------------------------------- the guard
GPORT="$(free_port)"
APORT="$(free_port)"
mkdir -p "$RUNDIR/guard"
t=$(date +%s.%N)
# The operator's step over an existing InvokeAI (README, "Owner records on 6.12"): setup.py's items predate the guard.
( cd "$REPO" && "$GUARD_BIN" ledger adopt-existing --db "$ROOT/databases/invokeai.db" --routes "$ROUTES" \
    --ledger "$RUNDIR/guard/ledger.db" ) > "$RUNDIR/ledger-adopt.out" 2>&1 \
  || { cat "$RUNDIR/ledger-adopt.out" >&2; die "invoke-guard ledger adopt-existing failed"; }
# Run from the repo root like tests/e2e/run.sh (config/invoke-guard.toml; the flags override it). Decision lines
# are logged at info level: the false-deny classification reads them, so the level is pinned.
( cd "$REPO" && INVOKE_GUARD_LOG=info exec "$GUARD_BIN" serve --listen "127.0.0.1:$GPORT" --upstream "$UPSTREAM" \
    --db "$ROOT/databases/invokeai.db" --routes "$ROUTES" --ledger "$RUNDIR/guard/ledger.db" \
    --admin-listen "127.0.0.1:$APORT" > "$RUNDIR/guard.log" 2>&1 < /dev/null ) &
GUARD_PID=$!
wait_guard_ready "the guard" "$APORT" "$RUNDIR/guard.log"
t_guard=$(secs "$t")
GUARD="http://127.0.0.1:$GPORT"
log "guard pid=$GUARD_PID on $GUARD (admin 127.0.0.1:$APORT) in front of $UPSTREAM, ready in ${t_guard}s; routes $ROUTES"

# The upstream bug the socket workaround is for: report whether it is (still) there.
sock_direct="$(http_status "$UPSTREAM/ws/socket.io/?EIO=4&transport=polling" gzip)"
sock_identity="$(http_status "$UPSTREAM/ws/socket.io/?EIO=4&transport=polling" identity)"
sock_guard="$(http_status "$GUARD/ws/socket.io/?EIO=4&transport=polling" gzip)"
if [[ "$sock_direct" == 500 && "$sock_identity" == 200 ]]; then
  log "note: InvokeAI $V answers 500 to Engine.IO polling with Accept-Encoding: gzip (200 without): upstream bug;" \
      "SOCKET_GZIP_WORKAROUND=${SOCKET_GZIP_WORKAROUND:-1} re-issues the UI's polling requests without gzip in the" \
      "direct baseline run only"
else
  log "note: Engine.IO polling straight to InvokeAI: $sock_direct with gzip, $sock_identity without"
fi
# (anonymous: the guard answers 401 before forwarding; a 500 here would mean it forwarded gzip to InvokeAI)
log "note: anonymous Engine.IO polling through the guard with gzip: $sock_guard"

# ---------------------------------------------------------------- the browser
export CHROMIUM
t=$(date +%s.%N)
rc_direct=0
run_child node "$HERE/flow.mjs" --mode direct --base "$UPSTREAM" --manifest "$RUNDIR/manifest.json" --user carol \
  --out "$RUNDIR/direct-report.json" --profile "$RUNDIR/profile-direct" --shots "$RUNDIR/shots" \
  --log "$RUNDIR/direct-flow.out" --chromium "$CHROMIUM" >&2 || rc_direct=$?
t_direct=$(secs "$t")
if [[ $rc_direct != 0 ]]; then
  log "ERROR: the flow FAILS against InvokeAI $V itself (baseline, rc=$rc_direct): a test or upstream problem, not the guard's;" \
      "see $RUNDIR/direct-report.json and $RUNDIR/shots/direct-*.png"
  [[ -f "$RUNDIR/direct-report.json" ]] || die "no baseline report; cannot compare"
fi

t=$(date +%s.%N)
rc_guard=0
run_child node "$HERE/flow.mjs" --mode guard --base "$GUARD" --manifest "$RUNDIR/manifest.json" --user alice \
  --out "$RUNDIR/guard-report.json" --profile "$RUNDIR/profile-guard" --shots "$RUNDIR/shots" \
  --guard-log "$RUNDIR/guard.log" --baseline "$RUNDIR/direct-report.json" --upstream "$UPSTREAM" \
  --screenshot "$ARTIFACTS/gallery-$V.png" --log "$RUNDIR/guard-flow.out" --chromium "$CHROMIUM" >&2 || rc_guard=$?
t_flow=$(secs "$t")
rm -rf "$RUNDIR"/profile-*
if [[ $rc_guard != 0 && -f "$RUNDIR/shots/guard-99-error.png" ]]; then
  cp "$RUNDIR/shots/guard-99-error.png" "$ARTIFACTS/browser-failure-$V.png"
  log "the page when the guard flow stopped: $ARTIFACTS/browser-failure-$V.png"
fi

# ---------------------------------------------------------------- model access and quotas in the UI
# A guard of its own with models-groups.toml; dana (interns) may not use SDXL or the detail LoRA and may have one
# item queued (tiny models installed through InvokeAI's own install API; the processor paused: nothing runs).
models_final=""
t_models=0
if [[ "${MODELS:-1}" == 1 ]]; then
  t=$(date +%s.%N)
  stop_processes
  run_child "$PY" "$HERE/models_setup.py" --base "$UPSTREAM" --manifest "$RUNDIR/manifest.json" \
    --workdir "$RUNDIR/models" --out "$RUNDIR/models-setup.json" >&2 || die "models_setup.py failed on InvokeAI $V"
  MPORT="$(free_port)"
  MAPORT="$(free_port)"
  mkdir -p "$RUNDIR/models-guard"
  ( cd "$REPO" && INVOKE_GUARD_LOG=info exec "$GUARD_BIN" serve --listen "127.0.0.1:$MPORT" --upstream "$UPSTREAM" \
      --db "$ROOT/databases/invokeai.db" --routes "$ROUTES" --ledger "$RUNDIR/models-guard/ledger.db" \
      --groups "$HERE/models-groups.toml" --admin-listen "127.0.0.1:$MAPORT" > "$RUNDIR/models-guard.log" 2>&1 < /dev/null ) &
  GUARD_PID=$!
  wait_guard_ready "the models guard" "$MAPORT" "$RUNDIR/models-guard.log"
  rc_models=0
  run_child node "$HERE/models.mjs" --base "http://127.0.0.1:$MPORT" --setup "$RUNDIR/models-setup.json" --version "$V" \
    --out "$RUNDIR/models-report.json" --shots "$RUNDIR/shots" --log "$RUNDIR/models-flow.out" \
    --batch-out "$RUNDIR/webui-enqueue.json" --chromium "$CHROMIUM" >&2 || rc_models=$?
  run_child "$PY" "$HERE/models_setup.py" --base "$UPSTREAM" --manifest "$RUNDIR/manifest.json" --teardown >&2 || true
  models_final="$(grep -E '^(PASS|FAIL) [0-9]+/[0-9]+ ' "$RUNDIR/models-flow.out" | tail -1 || true)"
  [[ -n "$models_final" ]] || models_final="FAIL 0/1 leaks=? false_denies=? (models.mjs printed no result; rc=$rc_models)"
  t_models=$(secs "$t")
fi

cleanup || true
log "timings: install ${t_install}s, InvokeAI start ${t_start}s, seed ${t_setup}s, guard ${t_guard}s," \
    "browser direct ${t_direct}s, browser guard ${t_flow}s, models ${t_models}s, total $(secs "$T_ALL")s"
log "logs: $ROOT/server.log $RUNDIR/guard.log; reports: $RUNDIR/{direct,guard}-report.json; artifact: $ARTIFACTS/gallery-$V.png"
final="$(grep -E '^(PASS|FAIL) [0-9]+/[0-9]+ ' "$RUNDIR/guard-flow.out" | tail -1 || true)"
[[ -n "$final" ]] || final="FAIL 0/1 leaks=? false_denies=? (the guard flow printed no result; rc=$rc_guard)"
if [[ $rc_direct != 0 && "$final" == PASS* ]]; then final="FAIL${final#PASS} (baseline against InvokeAI itself failed)"; fi
echo "$final"
[[ -z "$models_final" ]] || echo "$models_final"
[[ $rc_guard == 0 && $rc_direct == 0 && "$final" == PASS* && ( -z "$models_final" || "$models_final" == PASS* ) ]]
