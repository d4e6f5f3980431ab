#!/usr/bin/env bash
# Real InvokeAI behind the guard vs direct, for the UI's common requests (docs/benchmarks.md,
# issue #12): image list, thumbnail, full image, queue status.
#
#   scripts/bench/invokeai.sh [VERSION]      VERSION: 6.14.2 (default)
#
# Starts an unmodified InvokeAI (scripts/invokeai/start.sh; the venv is installed by
# scripts/invokeai/install.sh when missing) on a free loopback port with a fresh root under
# /tmp/invoke-guard-bench.*, makes an admin and alice, uploads one image as alice, starts the
# release guard in front (and beside it the plain hyper passthrough of run.sh, so that the cost
# of any extra loopback hop in front of InvokeAI is told apart from the guard's own), then
# measures each request ROUNDS times in turn, direct, through the plain hop and through the guard
# (the order rotates each round), N requests in a row on one keep-alive connection
# (examples/bench_load.rs `each`). Every response must be 200. Prints the median p50 of each, the
# ratio guard / direct per request kind (the target) and the ratios hop / direct and
# guard / hop, and writes target/bench/invokeai.md.
# Stops InvokeAI and the guard on every exit path.
#
# Knobs: ROUNDS=5 N=100 WORKERS=1 SKIP_BUILD=0 KEEP=0 GUARD_BIN=target/release/invoke-guard
#   LOAD_BIN=target/release/examples/bench_load HOP_BIN=target/release/examples/bench_passthrough
set -euo pipefail

VERSION=${1:-6.14.2}
ROUNDS=${ROUNDS:-5}
N=${N:-100}
WORKERS=${WORKERS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
OUT=$TARGET_DIR/bench
PASSWORD=Bench-pass-1234

log() { printf '[bench-invokeai] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

command -v python3 >/dev/null || die "python3 is required"
if [[ $SKIP_BUILD != 1 ]]; then
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet --bin invoke-guard --example bench_load --example bench_passthrough)
fi
GUARD_BIN=${GUARD_BIN:-$BIN/invoke-guard}
LOAD_BIN=${LOAD_BIN:-$BIN/examples/bench_load}
HOP_BIN=${HOP_BIN:-$BIN/examples/bench_passthrough}
[[ -x $GUARD_BIN && -x $LOAD_BIN && -x $HOP_BIN ]] || die "missing $GUARD_BIN, $LOAD_BIN or $HOP_BIN (run without SKIP_BUILD=1)"
"$ROOT/scripts/invokeai/install.sh" "$VERSION" >/dev/null

WORK=$(mktemp -d /tmp/invoke-guard-bench.XXXXXX)
IROOT=$WORK/invokeai-root
GUARD_PID=""
HOP_PID=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $HOP_PID ]]; then
        kill -TERM "$HOP_PID" 2>/dev/null || true
        wait "$HOP_PID" 2>/dev/null || true
    fi
    if [[ -n $GUARD_PID ]]; then
        kill -TERM "$GUARD_PID" 2>/dev/null || true
        wait "$GUARD_PID" 2>/dev/null || true
    fi
    "$ROOT/scripts/invokeai/stop.sh" "$IROOT" >/dev/null 2>&1 || true
    if [[ $KEEP == 1 || $status -ne 0 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

P_INVOKE=$(free_port)
P_GUARD=$(free_port)
P_ADMIN=$(free_port)
P_HOP=$(free_port)
log "starting InvokeAI $VERSION on 127.0.0.1:$P_INVOKE"
"$ROOT/scripts/invokeai/start.sh" "$VERSION" "$P_INVOKE" "$IROOT" >/dev/null

python3 - "http://127.0.0.1:$P_INVOKE" "$PASSWORD" "$WORK/ids.json" "$ROOT/tests/e2e" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[4])
from igclient import Client, png
base, pw, out = sys.argv[1], sys.argv[2], sys.argv[3]
c = Client(base)
def ok(r, what):
    if r.status not in (200, 201):
        sys.exit(f"bench: {what}: {r.status} {r.detail()}")
    return r.json()
ok(c.request("POST", "/api/v1/auth/setup", json_body={"email": "admin@bench.example", "display_name": "Admin", "password": pw}), "setup")
tok = lambda email: ok(c.request("POST", "/api/v1/auth/login", json_body={"email": email, "password": pw, "remember_me": False}), "login " + email)["token"]
admin = tok("admin@bench.example")
ok(c.request("POST", "/api/v1/auth/users", admin, json_body={"email": "alice@bench.example", "display_name": "Alice", "password": pw, "is_admin": False}), "create alice")
alice = tok("alice@bench.example")
image = ok(c.request("POST", "/api/v1/images/upload", alice, params={"image_category": "user", "is_intermediate": False},
                     files=[("file", "alice.png", png(512, 512, (200, 40, 90)), "image/png")]), "upload")
json.dump({"token": alice, "image_name": image["image_name"]}, open(out, "w"))
PY
TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['token'])" "$WORK/ids.json")
IMAGE=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['image_name'])" "$WORK/ids.json")

TOKIO_WORKER_THREADS=$WORKERS "$GUARD_BIN" serve --config /dev/null \
    --listen "127.0.0.1:$P_GUARD" --admin-listen "127.0.0.1:$P_ADMIN" \
    --upstream "http://127.0.0.1:$P_INVOKE" --db "$IROOT/databases/invokeai.db" \
    --routes "$ROOT/routes.toml" --ledger "$WORK/ledger.db" 2>"$WORK/guard.log" &
GUARD_PID=$!
TOKIO_WORKER_THREADS=$WORKERS "$HOP_BIN" "127.0.0.1:$P_HOP" "127.0.0.1:$P_INVOKE" 2>"$WORK/hop.log" &
HOP_PID=$!
for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$P_ADMIN/readyz" 2>/dev/null &&
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$P_HOP/api/v1/app/version" 2>/dev/null && break
    kill -0 "$GUARD_PID" 2>/dev/null || die "the guard exited: $(cat "$WORK/guard.log")"
    sleep 0.1
done

declare -A REQ=(
    [list]="/api/v1/images/?limit=50&offset=0"
    [thumbnail]="/api/v1/images/i/$IMAGE/thumbnail"
    [full]="/api/v1/images/i/$IMAGE/full"
    [queue_status]="/api/v1/queue/default/status"
)
KINDS=(list thumbnail full queue_status)
RESULTS=$WORK/results.tsv
: >"$RESULTS"
kv() { sed -n "s/.* $2=\\([0-9.]*\\).*/\\1/p" <<<" $1"; }
one() { # one ROUND KIND WHERE PORT
    local line
    line=$(timeout 300 "$LOAD_BIN" each "http://127.0.0.1:$4${REQ[$2]}" "$N" 0 0 200 "Authorization: Bearer $TOKEN")
    [[ $(kv "$line" ok) == "$N" ]] || die "$2 via $3: not every response was 200: $line"
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(kv "$line" p50_us)" "$(kv "$line" p99_us)" >>"$RESULTS"
}
for ((r = 1; r <= ROUNDS; r++)); do
    for k in "${KINDS[@]}"; do
        case $((r % 3)) in
            1) one "$r" "$k" direct "$P_INVOKE"; one "$r" "$k" hop "$P_HOP"; one "$r" "$k" guard "$P_GUARD" ;;
            2) one "$r" "$k" guard "$P_GUARD"; one "$r" "$k" direct "$P_INVOKE"; one "$r" "$k" hop "$P_HOP" ;;
            *) one "$r" "$k" hop "$P_HOP"; one "$r" "$k" guard "$P_GUARD"; one "$r" "$k" direct "$P_INVOKE" ;;
        esac
    done
    log "round $r done"
done

# How often the guard's facts were read from the database instead of its cache while InvokeAI ran
# (a database InvokeAI keeps writing to invalidates the cache: see the report).
FACT_READS=$(curl -fsS --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics" |
    sed -n 's/^[a-z_]*facts_cache_\(hits\|misses\)_total \([0-9]*\).*/\1=\2/p' | tr '\n' ' ')

mkdir -p "$OUT"
REPORT=$OUT/invokeai.md
{
    echo "# Real InvokeAI $VERSION behind the guard vs direct"
    echo
    echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ); $ROUNDS rounds × $N sequential requests on one keep-alive connection, direct, plain hyper hop and guard in rotating order; guard and hop TOKIO_WORKER_THREADS=$WORKERS, guard log level info"
    echo "- machine: $(nproc) CPUs, load average at end $(cut -d' ' -f1-3 /proc/loadavg) (shared with other work)"
    echo "- guard fact cache over the run ($((ROUNDS * N * ${#KINDS[@]})) guarded requests): ${FACT_READS:-not read}"
    echo
    echo "| request | direct p50 (µs) | plain hop p50 (µs) | guard p50 (µs) | guard / direct (per round, median [min–max]) | goal ≤ 1.05 | hop / direct | guard / hop |"
    echo "|---|---|---|---|---|---|---|---|"
    awk -F'\t' '
    function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
    function med(a, n) { sortn(a, n); return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    { p50[$2, $3, $1] = $4; if ($1 > rounds) rounds = $1 }
    END {
        split("list thumbnail full queue_status", kinds, " ")
        for (i = 1; i <= 4; i++) {
            k = kinds[i]; n = 0
            for (r = 1; r <= rounds; r++) {
                d[++n] = p50[k, "direct", r]; h[n] = p50[k, "hop", r]; g[n] = p50[k, "guard", r]
                q[n] = g[n] / d[n]; qh[n] = h[n] / d[n]; qg[n] = g[n] / h[n]
            }
            dm = med(d, n); hm = med(h, n); gm = med(g, n); qm = med(q, n); qhm = med(qh, n); qgm = med(qg, n)
            printf "| %s | %.0f | %.0f | %.0f | %.3f [%.3f–%.3f] | %s | %.3f | %.3f |\n", k, dm, hm, gm, qm, q[1], q[n], (qm <= 1.05 ? "met" : "**missed**"), qhm, qgm
        }
    }' "$RESULTS"
} >"$REPORT"
cat "$REPORT"
