# Process control shared by the end-to-end runners (sourced, not run).
#
# Long steps run in the background and are waited for, so Ctrl-C / SIGTERM interrupt them at once
# (bash runs a trap only after a *foreground* child finishes); stop_processes ends the current child
# and the guard by PID. Callers keep CHILD and GUARD_PID and stop InvokeAI themselves.
CHILD=""
GUARD_PID=""

run_child() {
  "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return $rc
}

stop_processes() {
  if [[ -n "$CHILD" ]] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null || true   # node: playwright closes its Chromium on SIGTERM
    wait "$CHILD" 2>/dev/null || true
  fi
  CHILD=""
  if [[ -n "$GUARD_PID" ]] && kill -0 "$GUARD_PID" 2>/dev/null; then
    # The second signal skips the guard's readiness delay (limits.shutdown_delay_ms): drain now.
    kill -TERM "$GUARD_PID" 2>/dev/null || true
    kill -INT "$GUARD_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$GUARD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$GUARD_PID" 2>/dev/null && kill -KILL "$GUARD_PID" 2>/dev/null
    wait "$GUARD_PID" 2>/dev/null || true
  fi
  GUARD_PID=""
}

secs() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
