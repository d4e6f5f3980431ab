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

# Wait (READY_TIMEOUT seconds) until the guard GUARD_PID answers 200 on its admin /readyz at
# ADMIN_PORT; if it exits or stays unready, show the tail of LOG and die naming WHAT. Uses the
# caller's http_status and die.
wait_guard_ready() {  # WHAT ADMIN_PORT LOG
  local what=$1 port=$2 logf=$3
  local deadline=$(( $(date +%s) + READY_TIMEOUT ))
  until [[ "$(http_status "http://127.0.0.1:$port/readyz")" == 200 ]]; do
    if ! kill -0 "$GUARD_PID" 2>/dev/null; then
      tail -30 "$logf" >&2 || true
      die "$what exited during startup (log: $logf)"
    fi
    (( $(date +%s) <= deadline )) || { tail -30 "$logf" >&2; die "$what not ready after ${READY_TIMEOUT}s"; }
    sleep 0.2
  done
}

secs() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
