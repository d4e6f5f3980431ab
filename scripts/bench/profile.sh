#!/usr/bin/env bash
# Profile the guard's allow path on loopback (docs/benchmarks.md, "Profiling"): where its CPU
# goes, and how many syscalls it makes per request.
#
#   scripts/bench/profile.sh [GUARD_BINARY]      default: target/release/invoke-guard
#
# Starts examples/bench_origin and the guard (TOKIO_WORKER_THREADS=1, default log level info,
# the request of scenario D in run.sh: alice's own image), warms up, then
#   1. `perf record -F 2000` of the guard process during `wrk -t1 -c64 -d8s`, printed as a share
#      of samples by category (kernel scheduling, kernel networking, malloc, hyper, tokio, the
#      pipeline, identity, tracing, ...) and the top symbols;
#   2. `strace -c -f` of the guard during `wrk -c64 -d3s`: syscalls per request (strace slows
#      the guard a lot; only the counts per request mean anything).
# perf on Debian 12 (6.1) does not symbolize this binary (it reports file offsets), so the
# symbols are resolved here through `nm` and the text segment's offset-to-address delta.
# With FLAME=1 it also records call graphs (`-g`, frame pointers where present) and writes an
# SVG flamegraph when inferno (`cargo install inferno`) is on PATH.
# Writes everything under target/bench/profile.*; stops every process it started on exit.
# Needs: perf (linux-perf), strace, wrk, python3, curl; the release examples (run.sh builds them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
GUARD=${1:-$BIN/invoke-guard}
LOGLEVEL=${GUARD_LOG:-info}
for t in perf strace wrk python3 curl; do command -v $t >/dev/null || { echo "profile.sh: $t is required" >&2; exit 1; }; done
for b in "$GUARD" "$BIN/examples/bench_origin" "$BIN/examples/bench_fixture"; do
    [[ -x $b ]] || { echo "profile.sh: missing $b (run scripts/bench/run.sh once, or cargo build --release --examples)" >&2; exit 1; }
done
mkdir -p "$TARGET_DIR/bench"
W=$(mktemp -d "$TARGET_DIR/bench/profile.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
cp "$ROOT/tests/fixtures/invokeai-6.14.2-rich.db" "$W/invokeai.db"
chmod u+w "$W/invokeai.db"
: >"$W/empty.toml"
M=$ROOT/tests/fixtures/invokeai-6.14.2-rich.json
IMAGE=$("$BIN/examples/bench_fixture" "$M" get /images/alice_private_1/image_name)
TOKEN=$("$BIN/examples/bench_fixture" "$M" token alice)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PO=$(port) PG=$(port) PA=$(port)
"$BIN/examples/bench_origin" "127.0.0.1:$PO" >"$W/origin.log" 2>&1 &
PIDS+=($!)
TOKIO_WORKER_THREADS=1 INVOKE_GUARD_LOG=$LOGLEVEL "$GUARD" serve --config "$W/empty.toml" \
    --listen "127.0.0.1:$PG" --upstream "http://127.0.0.1:$PO" --db "$W/invokeai.db" \
    --routes "$ROOT/routes.toml" --ledger "$W/ledger.db" --admin-listen "127.0.0.1:$PA" \
    >"$W/guard.out" 2>"$W/guard.log" &
GP=$!
PIDS+=($GP)
for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PA/readyz" 2>/dev/null && break
    sleep 0.1
done
URL=http://127.0.0.1:$PG/api/v1/images/i/$IMAGE
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$URL")
[[ $code == 200 ]] || { echo "profile.sh: expected 200 from the guard, got $code" >&2; exit 1; }
timeout 30 wrk -t1 -c64 -d2s -H "Authorization: Bearer $TOKEN" "$URL" >/dev/null

# 1. perf
G=()
[[ ${FLAME:-0} == 1 ]] && G=(-g)
perf record -F 2000 "${G[@]}" -p "$GP" -o "$W/perf.data" -- sleep 8 2>"$W/perf.log" &
PP=$!
timeout 40 wrk -t1 -c64 -d8s -H "Authorization: Bearer $TOKEN" "$URL" >"$W/wrk.txt"
wait "$PP" || true
echo "== perf: guard at c64, one runtime thread, log level $LOGLEVEL ($(awk '/^Requests\/sec/ { print $2 }' "$W/wrk.txt") rps under perf)"
perf report -i "$W/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null >"$W/report.txt" || true
python3 - "$W/report.txt" "$GUARD" <<'PY'
import bisect, collections, re, subprocess, sys
report, binary = sys.argv[1], sys.argv[2]
seg = [l.split() for l in subprocess.run(['readelf', '-lW', binary], capture_output=True, text=True).stdout.splitlines() if 'LOAD' in l and 'R E' in l][0]
delta = int(seg[2], 16) - int(seg[1], 16)
syms = []
for l in subprocess.run(['nm', '-C', '--defined-only', binary], capture_output=True, text=True).stdout.splitlines():
    p = l.split(' ', 2)
    if len(p) == 3 and p[1] in 'tTwW':
        syms.append((int(p[0], 16), p[2]))
syms.sort()
addrs = [a for a, _ in syms]
cats = [('tracing / fmt (log line)', r'tracing|core::fmt|fmt::Write|write_str|Formatter|logwriter'),
        ('identity (jwt, json, hmac)', r'jsonwebtoken|base64|serde_json|serde::|identity::|sha2|hmac|digest'),
        ('facts (moka)', r'moka|facts::|crossbeam|quanta'),
        ('hyper client + pool', r'hyper_util::client|hyper::client|role::Client|pool::'),
        ('hyper server + h1', r'hyper_util::server|hyper::server|role::Server|proto::h1|hyper::'),
        ('http headers', r'^http::|HeaderMap|header::'),
        ('guard pipeline + http', r'invoke_guard'),
        ('tokio', r'tokio'),
        ('rust alloc / hash / bytes', r'hash|alloc::|RawVec|drop_in_place|Arc|Bytes|bytes::|mi_|mimalloc'),
        ('metrics', r'prometheus')]
by_cat, by_sym = collections.Counter(), collections.Counter()
for l in open(report):
    m = re.match(r'\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s{2,}', l)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(4)
    if sym.startswith('0x') and dso not in ('[kernel.kallsyms]',) and 'libc' not in dso:
        i = bisect.bisect_right(addrs, int(sym, 16) + delta) - 1
        sym = syms[i][1] if i >= 0 else sym
    sym = re.sub(r'::h[0-9a-f]{16}$', '', sym)
    if 'kernel' in dso:
        cat = 'kernel: scheduling, wake-ups' if re.search('switch|sched|wake|spin_unlock|futex|schedule|enqueue|dequeue|update_curr|pick_next', sym) else 'kernel: network, syscalls'
    elif 'libc' in dso:
        cat = 'libc: malloc / free' if re.search('malloc|free|unlink_chunk|consolidate|realloc|_int_', sym) else 'libc: memmove / memcmp' if 'mem' in sym else 'libc: other'
    else:
        cat = next((n for n, rx in cats if re.search(rx, sym)), 'other')
    by_cat[cat] += pct
    by_sym[(dso[:16], sym[:120])] += pct
print('| category | share of guard samples |\n|---|---|')
for k, v in by_cat.most_common():
    print(f'| {k} | {v:.1f} % |')
print('\ntop symbols:')
for (d, s), v in by_sym.most_common(25):
    print(f'{v:6.2f}%  {d:16} {s}')
PY
if [[ ${FLAME:-0} == 1 ]] && command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$W/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph >"$W/flame.svg"
    echo "flamegraph: $W/flame.svg"
fi

# 2. strace
timeout -s INT 4 strace -c -f -p "$GP" -o "$W/strace.txt" 2>/dev/null &
SP=$!
sleep 0.5
timeout 30 wrk -t1 -c64 -d3s -H "Authorization: Bearer $TOKEN" "$URL" >"$W/wrk-strace.txt"
wait "$SP" || true
N=$(awk '/ requests in / { print $1 }' "$W/wrk-strace.txt")
echo
echo "== syscalls per request (strace -c, $N requests)"
awk -v n="$N" 'NR > 2 && $NF != "total" && $4 + 0 > 0 { printf "%-16s %6.2f\n", $NF, $4 / n }' "$W/strace.txt" | sort -k2 -nr | head -8
echo
echo "files: $W"
