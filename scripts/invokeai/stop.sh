#!/usr/bin/env bash
# Stop the InvokeAI server started by start.sh for ROOT: SIGTERM to the PID in ROOT/server.pid,
# wait up to STOP_TIMEOUT seconds (default 30), then SIGKILL. Only that PID is signalled,
# and only if it still is an invokeai-web process. Idempotent: no server → exit 0.
#
#   scripts/invokeai/stop.sh ROOT
set -euo pipefail
ROOT="${1:?usage: stop.sh ROOT}"
PIDFILE="$ROOT/server.pid"
TIMEOUT="${STOP_TIMEOUT:-30}"

[[ -f "$PIDFILE" ]] || exit 0
pid="$(cat "$PIDFILE")"
[[ "$pid" =~ ^[0-9]+$ ]] || { rm -f "$PIDFILE"; exit 0; }
if ! kill -0 "$pid" 2>/dev/null; then rm -f "$PIDFILE"; exit 0; fi
if ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "invokeai-web"; then
  echo "stop.sh: pid $pid is not an invokeai-web process any more; not signalling it" >&2
  rm -f "$PIDFILE"; exit 0
fi
kill -TERM "$pid" 2>/dev/null || true
deadline=$(( $(date +%s) + TIMEOUT ))
while kill -0 "$pid" 2>/dev/null; do
  if (( $(date +%s) >= deadline )); then
    echo "stop.sh: pid $pid still alive after ${TIMEOUT}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
    break
  fi
  sleep 0.2
done
rm -f "$PIDFILE"
