#!/usr/bin/env bash
# Start an unmodified InvokeAI (installed by install.sh) headless, on loopback, in multiuser mode.
#
#   scripts/invokeai/start.sh VERSION PORT ROOT
#
# ROOT is made fresh: it must not exist, be empty, or be a root this script made before
# (marker file ROOT/.invoke-guard-root), which is wiped. REUSE_ROOT=1 keeps an existing
# root made by this script (its database and images) instead.
# Writes ROOT/server.pid and ROOT/server.log, waits until GET /api/v1/auth/status answers
# with multiuser_enabled=true (STARTUP_TIMEOUT seconds, default 180), then prints one line:
#   READY pid=<pid> port=<port> startup_s=<seconds> url=http://127.0.0.1:<port>
# Stop it with scripts/invokeai/stop.sh ROOT.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${1:?usage: start.sh VERSION PORT ROOT}"
PORT="${2:?usage: start.sh VERSION PORT ROOT}"
ROOT="${3:?usage: start.sh VERSION PORT ROOT}"
VENVS="${INVOKEAI_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs}"
VENV="$VENVS/invokeai-$VERSION"
TIMEOUT="${STARTUP_TIMEOUT:-180}"

die() { echo "start.sh: $*" >&2; exit 2; }

[[ "$PORT" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"
[[ -x "$VENV/bin/invokeai-web" ]] || die "no $VENV/bin/invokeai-web; run scripts/invokeai/install.sh $VERSION first"
PY="$VENV/bin/python"

if [[ -f "$ROOT/server.pid" ]] && kill -0 "$(cat "$ROOT/server.pid")" 2>/dev/null; then
  die "a server is already running for $ROOT (pid $(cat "$ROOT/server.pid")); stop it with stop.sh $ROOT"
fi
if [[ -e "$ROOT" && "${REUSE_ROOT:-0}" != 1 ]]; then
  if [[ -f "$ROOT/.invoke-guard-root" ]]; then
    rm -rf "$ROOT"
  elif [[ -n "$(ls -A "$ROOT" 2>/dev/null)" ]]; then
    die "$ROOT exists, is not empty and was not made by this script; refusing to wipe it"
  fi
fi
mkdir -p "$ROOT"
ROOT="$(cd "$ROOT" && pwd)"
touch "$ROOT/.invoke-guard-root"
if [[ ! -f "$ROOT/invokeai.yaml" ]]; then
  # `multiuser: true` turns on InvokeAI's users/JWT layer (6.12.0 and later).
  cat > "$ROOT/invokeai.yaml" <<YAML
# Internal metadata - do not edit:
schema_version: 4.0.2

host: 127.0.0.1
port: $PORT
multiuser: true
log_format: plain
YAML
fi

# Never reach out to model hubs; loopback and multiuser whatever the yaml says (env wins).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export INVOKEAI_HOST=127.0.0.1 INVOKEAI_PORT="$PORT" INVOKEAI_MULTIUSER=true

t0=$(date +%s.%N)
nohup "$VENV/bin/invokeai-web" --root "$ROOT" > "$ROOT/server.log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$ROOT/server.pid"

ready() {
  "$PY" - "$PORT" <<'PYEOF'
import gzip, json, sys, urllib.request
# browser-like: gzip accepted (and decoded); one anonymous probe, so no cookie jar
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/v1/auth/status",
                             headers={"Accept-Encoding": "gzip, deflate, br"})
try:
    with urllib.request.urlopen(req, timeout=2) as r:
        raw = r.read()
        body = json.loads(gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" else raw)
    sys.exit(0 if body.get("multiuser_enabled") is True else 3)
except Exception:
    sys.exit(1)
PYEOF
}

deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
  rc=0; ready || rc=$?
  [[ $rc == 0 ]] && break
  if [[ $rc == 3 ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    die "server on port $PORT answers but multiuser_enabled is not true"
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start.sh: server exited during startup; last log lines:" >&2; tail -40 "$ROOT/server.log" >&2
    rm -f "$ROOT/server.pid"; exit 4
  fi
  if (( $(date +%s) > deadline )); then
    echo "start.sh: not ready after ${TIMEOUT}s; last log lines:" >&2; tail -40 "$ROOT/server.log" >&2
    "$HERE/stop.sh" "$ROOT" >&2 || true; exit 5
  fi
  sleep 0.3
done
t1=$(date +%s.%N)
printf 'READY pid=%s port=%s startup_s=%.1f url=http://127.0.0.1:%s\n' "$pid" "$PORT" \
  "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "$PORT"
