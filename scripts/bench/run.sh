#!/usr/bin/env bash
# Loopback whole-proxy benchmark (docs/benchmarks.md; method: anchors §2.3).
#
# Measures, in one run, interleaved over ROUNDS rounds, everything on 127.0.0.1:
#   A  origin direct                (examples/bench_origin.rs, fixed 1 KiB 200)
#   B  plain hyper passthrough      (examples/bench_passthrough.rs, pooled hyper-util client)
#   C  nginx                        (Debian nginx-light, WORKERS worker processes, upstream keepalive)
#   D  invoke-guard allow path      (GET /api/v1/images/i/{alice's image}, alice's token, warm facts)
#   F  invoke-guard deny path       (the same image with bob's token: 403 from image.read)
#   P  a second guard binary        (optional: BASE_GUARD=path, e.g. built from the previous
#                                    commit; D's request, to compare two builds in one run)
# Load: wrk -t1 -cCONNS -dDURATION (closed loop) and wrk -t1 -c1 (latency), after a warm-up.
# CPU per request: utime+stime of the server process from /proc/PID/stat, before/after each
# run, divided by wrk's request count.
# Also, in every round: open-loop (fixed-rate, examples/bench_load.rs, latency from each
# request's due time) for C and D at 50 % and 80 % of that round's nginx c64 rps, CPU per
# request of B, C and D at one fixed rate (half of that round's guard c64 rps), and streaming
# a 20 MiB body (.../full) through C and D (wrk -c4). Once per run: the cold decision (COLD_N
# images the guard has never seen, one request each, c1), the guard's RSS idle and with HOLD
# idle keep-alive connections, and its peak RSS while streaming.
# The guard runs with its default log level (info: one decision line per request, to a file),
# as an operator runs it.
#
# Writes target/bench/report.md (and results.tsv) and prints the report, with a table of the
# issue #12 targets (met or missed). Exits non-zero when a response-code check failed (A–D: 0
# non-2xx; F: every response 403, counted by the guard; open-loop, cold, streaming: every
# response 200).
#
# Knobs (environment): ROUNDS=3 DURATION=5 C1_DURATION=3 WARMUP=2 CONNS=64 WORKERS=1
#   PIN=0 (1: wrk on CPU 0, servers on CPU 1)  SKIP_BUILD=0  KEEP=0 (1: keep the work dir)
#   OPEN_DURATION=5 STREAM_DURATION=4 STREAM_BIG_MIB=200 COLD_N=2000 HOLD=1000 GUARD_LOG=info BASE_GUARD=
# Needs: cargo, curl, python3; installs wrk and nginx-light with apt-get when missing (as root).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
C1_DURATION=${C1_DURATION:-3}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
PIN=${PIN:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
OPEN_DURATION=${OPEN_DURATION:-5}
STREAM_DURATION=${STREAM_DURATION:-4}
COLD_N=${COLD_N:-2000}
HOLD=${HOLD:-1000}
GUARD_LOG=${GUARD_LOG:-info}
STREAM_BIG_MIB=${STREAM_BIG_MIB:-200}
BASE_GUARD=${BASE_GUARD:-}
SCENARIOS=(A B C D F)
[[ -n $BASE_GUARD ]] && SCENARIOS+=(P)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET_DIR/bench
FIXTURE=invokeai-6.14.2-rich
MANIFEST=$ROOT/tests/fixtures/$FIXTURE.json

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# === processes: every one we start is recorded and stopped on every exit path ===
PIDS=()
WORK=""
cleanup() {
    local status=$? pid i
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 || $status -ne 0 ]]; then
            log "work dir kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# === tools ===
apt_install() {
    [[ $(id -u) == 0 ]] || die "$1 is missing; install it (apt-get install $2) or run as root"
    log "installing $2 with apt-get"
    timeout 300 apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "$2" >/dev/null
}
command -v curl >/dev/null || die "curl is required"
command -v cargo >/dev/null || die "cargo is required"
command -v python3 >/dev/null || die "python3 is required (to add the cold-scenario images)"
# HOLD idle connections (plus the guard's own) need more descriptors than a default shell has.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v wrk >/dev/null || apt_install wrk wrk
NGINX=$(command -v nginx || true)
[[ -n $NGINX ]] || NGINX=/usr/sbin/nginx
[[ -x $NGINX ]] || { apt_install nginx nginx-light; NGINX=/usr/sbin/nginx; }
[[ -x $NGINX ]] || die "nginx not found after installing nginx-light"

# === build ===
if [[ $SKIP_BUILD != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet --bin invoke-guard \
        --example bench_origin --example bench_passthrough --example bench_fixture --example bench_load)
fi
BIN=$TARGET_DIR/release
for b in "$BIN/invoke-guard" "$BIN/examples/bench_origin" "$BIN/examples/bench_passthrough" "$BIN/examples/bench_fixture" "$BIN/examples/bench_load" ${BASE_GUARD:+"$BASE_GUARD"}; do
    [[ -x $b ]] || die "missing $b (run without SKIP_BUILD=1)"
done

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/work.XXXXXX")
# What else is using the machine before we start anything: busy share of all CPUs over 1 s
# (from /proc/stat), and the top processes by lifetime-average %CPU.
cpu_sample() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat; }
read -r busy0 total0 <<<"$(cpu_sample)"
sleep 1
read -r busy1 total1 <<<"$(cpu_sample)"
BUSY_START=$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) 'BEGIN { printf "%.0f%%", t ? 100 * b / t : 0 }')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
TOP_START=$(ps -eo pcpu=,comm= --sort=-pcpu | head -4 | awk '{ printf "%s %s%%; ", $2, $1 }')

# === ports ===
USED_PORTS=" "
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 30000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            echo "$p"
            return
        fi
    done
    die "no free port found"
}
P_ORIGIN=$(free_port)
P_PASS=$(free_port)
P_NGINX=$(free_port)
P_GUARD=$(free_port)
P_ADMIN=$(free_port)
P_BASE=$(free_port)
P_BASE_ADMIN=$(free_port)

SERVER_PIN=()
CLIENT_PIN=()
if [[ $PIN == 1 ]]; then
    SERVER_PIN=(taskset -c 1)
    CLIENT_PIN=(taskset -c 0)
fi

# start NAME CMD...: run in the background, log to WORK/NAME.log, record the pid in PID_NAME.
start() {
    local name=$1
    shift
    "${SERVER_PIN[@]}" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
}

# wait_ok URL PID: until URL answers 2xx (at most 10 s), or fail if PID died.
wait_ok() {
    local url=$1 pid=$2 i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || die "process for $url exited; see $WORK/*.log"
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$url not ready after 10 s"
}

# === fixture: a private copy of the database, tokens signed with its secret ===
cp "$ROOT/tests/fixtures/$FIXTURE.db" "$WORK/invokeai.db"
chmod u+w "$WORK/invokeai.db"
: >"$WORK/empty.toml"
fixture() { "$BIN/examples/bench_fixture" "$MANIFEST" "$@"; }
IMAGE=$(fixture get /images/alice_private_1/image_name)
TOKEN_ALICE=$(fixture token alice)
TOKEN_BOB=$(fixture token bob)
PATH_IMG=/api/v1/images/i/$IMAGE
# The cold scenario's images: COLD_N copies of alice's image row under new names, written before
# the guard starts (so no fact of theirs is cached and the watcher has nothing left to see).
python3 - "$WORK/invokeai.db" "$IMAGE" "$COLD_N" <<'PY'
import sqlite3, sys
db, image, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db)
cols = [r[1] for r in c.execute("PRAGMA table_info(images)") if r[1] != "image_name"]
sel = ", ".join(cols)
with c:
    for i in range(n):
        c.execute(f"INSERT INTO images (image_name, {sel}) SELECT ?, {sel} FROM images WHERE image_name = ?",
                  (f"benchcold-{i}.png", image))
assert c.execute("SELECT count(*) FROM images WHERE image_name LIKE 'benchcold-%'").fetchone()[0] == n
PY

# === servers ===
start origin "$BIN/examples/bench_origin" "127.0.0.1:$P_ORIGIN"
wait_ok "http://127.0.0.1:$P_ORIGIN/" "$PID_origin"

TOKIO_WORKER_THREADS=$WORKERS start passthrough "$BIN/examples/bench_passthrough" "127.0.0.1:$P_PASS" "127.0.0.1:$P_ORIGIN"
wait_ok "http://127.0.0.1:$P_PASS/" "$PID_passthrough"

mkdir -p "$WORK/nginx"
# WORKERS=1: one process doing all the work (master_process off). WORKERS=N: a master and N
# workers, as an operator runs nginx; its CPU is summed over the master and its workers.
if [[ $WORKERS == 1 ]]; then NGINX_PROCS="master_process off;"; else NGINX_PROCS="master_process on;"; fi
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
$NGINX_PROCS
worker_processes $WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    # hyper has no per-connection request limit; give nginx none that matters either.
    keepalive_requests 1000000;
    upstream origin {
        server 127.0.0.1:$P_ORIGIN;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
start nginx "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
wait_ok "http://127.0.0.1:$P_NGINX/" "$PID_nginx"

TOKIO_WORKER_THREADS=$WORKERS INVOKE_GUARD_LOG=$GUARD_LOG start guard "$BIN/invoke-guard" serve \
    --config "$WORK/empty.toml" \
    --listen "127.0.0.1:$P_GUARD" \
    --upstream "http://127.0.0.1:$P_ORIGIN" \
    --db "$WORK/invokeai.db" \
    --routes "$ROOT/routes.toml" \
    --ledger "$WORK/ledger.db" \
    --admin-listen "127.0.0.1:$P_ADMIN"
wait_ok "http://127.0.0.1:$P_ADMIN/readyz" "$PID_guard"
if [[ -n $BASE_GUARD ]]; then
    TOKIO_WORKER_THREADS=$WORKERS INVOKE_GUARD_LOG=$GUARD_LOG start base "$BASE_GUARD" serve \
        --config "$WORK/empty.toml" \
        --listen "127.0.0.1:$P_BASE" \
        --upstream "http://127.0.0.1:$P_ORIGIN" \
        --db "$WORK/invokeai.db" \
        --routes "$ROOT/routes.toml" \
        --ledger "$WORK/ledger-base.db" \
        --admin-listen "127.0.0.1:$P_BASE_ADMIN"
    wait_ok "http://127.0.0.1:$P_BASE_ADMIN/readyz" "$PID_base"
fi
rss_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
sleep 1
RSS_IDLE_START=$(rss_kb "$PID_guard" VmRSS)

# Scenario table: URL, extra wrk/curl header, measured pid, expected status.
declare -A URL HDR PID WANT
URL[A]=http://127.0.0.1:$P_ORIGIN$PATH_IMG; HDR[A]=""; PID[A]=$PID_origin; WANT[A]=200
URL[B]=http://127.0.0.1:$P_PASS$PATH_IMG; HDR[B]=""; PID[B]=$PID_passthrough; WANT[B]=200
URL[C]=http://127.0.0.1:$P_NGINX$PATH_IMG; HDR[C]=""; PID[C]=$PID_nginx; WANT[C]=200
URL[D]=http://127.0.0.1:$P_GUARD$PATH_IMG; HDR[D]="Authorization: Bearer $TOKEN_ALICE"; PID[D]=$PID_guard; WANT[D]=200
URL[F]=http://127.0.0.1:$P_GUARD$PATH_IMG; HDR[F]="Authorization: Bearer $TOKEN_BOB"; PID[F]=$PID_guard; WANT[F]=403
if [[ -n $BASE_GUARD ]]; then
    URL[P]=http://127.0.0.1:$P_BASE$PATH_IMG; HDR[P]=${HDR[D]}; PID[P]=$PID_base; WANT[P]=200
fi

for s in "${SCENARIOS[@]}"; do
    args=(-sS -o /dev/null -w '%{http_code}' --max-time 5)
    [[ -n ${HDR[$s]} ]] && args+=(-H "${HDR[$s]}")
    code=$(curl "${args[@]}" "${URL[$s]}")
    [[ $code == "${WANT[$s]}" ]] || die "scenario $s: expected ${WANT[$s]} from ${URL[$s]}, got $code"
done
log "all targets answer as expected (A-D${BASE_GUARD:+, P} 200, F 403)"

# === measurement ===
CLK_TCK=$(getconf CLK_TCK)
# utime+stime of a process (all its threads) and of its direct children (nginx's workers).
cpu_ticks() {
    local p total=0
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$total"
}

# Guard decision counters for rule images.get: "ALLOW DENY_FORBIDDEN MISSES".
guard_counters() {
    curl -fsS --max-time 2 "http://127.0.0.1:$P_ADMIN/metrics" | awk '
        /^invoke_guard_authz_decisions_total\{/ && /rule_id="images.get"/ {
            if ($0 ~ /decision="allow"/) allow += $NF
            else if ($0 ~ /reason="forbidden"/) forbidden += $NF
            else other += $NF
        }
        /^invoke_guard_facts_cache_misses_total / { misses = $NF }
        END { printf "%d %d %d %d\n", allow, forbidden, other, misses }'
}

# to_us VALUE: wrk's "512.00us" / "1.23ms" / "1.01s" in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n
        else if (v ~ /ms$/) print n * 1000
        else if (v ~ /m$/) print n * 60e6
        else if (v ~ /s$/) print n * 1e6
        else print n }'
}

RESULTS=$OUT/results.tsv
printf 'round\tscenario\tload\trps\tp50_us\tp99_us\trequests\tnon2xx\tsocket_errors\tcpu_us_per_req\torigin_cpu_us_per_req\tcheck\n' >"$RESULTS"
FAILED=0

# wrk_run SCENARIO CONNS SECONDS OUTFILE
wrk_run() {
    local s=$1 c=$2 d=$3 out=$4
    local args=(-t1 "-c$c" "-d${d}s" --latency --timeout 5s)
    [[ -n ${HDR[$s]} ]] && args+=(-H "${HDR[$s]}")
    timeout $((d + 20)) "${CLIENT_PIN[@]}" wrk "${args[@]}" "${URL[$s]}" >"$out" 2>&1 ||
        die "wrk failed for scenario $s: $(cat "$out")"
}

# measure ROUND SCENARIO LOAD CONNS SECONDS
measure() {
    local r=$1 s=$2 load=$3 c=$4 d=$5
    local out=$WORK/wrk-$r-$s-$load.txt pid=${PID[$s]}
    local before after obefore oafter gbefore gafter
    gbefore=$(guard_counters)
    before=$(cpu_ticks "$pid")
    obefore=$(cpu_ticks "$PID_origin")
    wrk_run "$s" "$c" "$d" "$out"
    after=$(cpu_ticks "$pid")
    oafter=$(cpu_ticks "$PID_origin")
    gafter=$(guard_counters)
    local requests rps p50 p99 non2xx errs
    requests=$(awk '/ requests in / { print $1; exit }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$out")
    p50=$(to_us "$(awk '$1 == "50%" { print $2; exit }' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" { print $2; exit }' "$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$out")
    non2xx=${non2xx:-0}
    errs=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10; exit }' "$out")
    errs=${errs:-0}
    [[ -n $requests && $requests -gt 0 ]] || die "no requests completed in scenario $s: $(cat "$out")"
    local cpu ocpu
    cpu=$(awk -v a="$before" -v b="$after" -v n="$requests" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t * 1e6 / n }')
    ocpu=$(awk -v a="$obefore" -v b="$oafter" -v n="$requests" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t * 1e6 / n }')
    # Response-code checks. The guard's own counters confirm D allowed and F denied by image.read.
    local check=ok ga gf go gm ha hf ho hm
    read -r ga gf go gm <<<"$gbefore"
    read -r ha hf ho hm <<<"$gafter"
    case $s in
        A | B | C | P)
            [[ $non2xx == 0 ]] || check="FAIL: $non2xx non-2xx"
            ;;
        D)
            [[ $non2xx == 0 ]] || check="FAIL: $non2xx non-2xx"
            [[ $((hf - gf + ho - go)) == 0 ]] || check="FAIL: guard denied $((hf - gf + ho - go))"
            [[ $((ha - ga)) -ge $requests ]] || check="FAIL: guard allowed $((ha - ga)) < $requests"
            [[ $check == ok ]] && check="ok (cache misses: $((hm - gm)))"
            ;;
        F)
            [[ $non2xx == "$requests" ]] || check="FAIL: $non2xx non-2xx of $requests"
            [[ $((ha - ga + ho - go)) == 0 ]] || check="FAIL: guard allowed/other $((ha - ga + ho - go))"
            [[ $((hf - gf)) -ge $requests ]] || check="FAIL: guard 403s $((hf - gf)) < $requests"
            ;;
    esac
    [[ $check == ok* ]] || FAILED=1
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$r" "$s" "$load" "$rps" "$p50" "$p99" "$requests" "$non2xx" "$errs" "$cpu" "$ocpu" "$check" >>"$RESULTS"
    log "round $r $s $load: $rps rps, p50 ${p50}us p99 ${p99}us, ${cpu} us CPU/req, $check"
}

# kv LINE KEY: the value of KEY=value in a bench_load output line.
kv() { sed -n "s/.* $2=\([0-9.]*\).*/\1/p" <<<" $1"; }

# load_run ROUND SCENARIO LOADNAME OUTFILE MODE URL A B C: bench_load with the scenario's header
load_run() {
    local r=$1 s=$2 name=$3 out=$4
    shift 4
    local hdr=()
    [[ -n ${HDR[$s]} ]] && hdr=("${HDR[$s]}")
    timeout 300 "${CLIENT_PIN[@]}" "$BIN/examples/bench_load" "$@" 200 "${hdr[@]}" >"$out" 2>&1 ||
        die "bench_load $name failed for scenario $s: $(cat "$out")"
}

# open_run ROUND SCENARIO PCT RATE: fixed-rate load; latency from each request's due time.
open_run() {
    local r=$1 s=$2 pct=$3 rate=$4 out=$WORK/open-$1-$2-$3.txt line check=ok
    load_run "$r" "$s" "open" "$out" open "${URL[$s]}" "$rate" "$OPEN_DURATION" 64
    line=$(tail -1 "$out")
    [[ $(kv "$line" bad) == 0 ]] || check="FAIL: $(kv "$line" bad) bad responses"
    [[ $check == ok ]] || FAILED=1
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t0\t-\t-\t%s\n' "$r" "$s" "o$pct" "$(kv "$line" rate)" \
        "$(kv "$line" p50_us)" "$(kv "$line" p99_us)" "$(kv "$line" sent)" "$(kv "$line" bad)" "$check" >>"$RESULTS"
    log "round $r $s open-loop ${pct}% ($rate/s): $line"
}

# eq_run ROUND SCENARIO RATE: the same fixed rate for every contender (half of the guard's own
# closed-loop maximum in this round, so each one sustains it) and each server's CPU per request:
# closed-loop CPU per request flatters the fastest server (more requests per wake-up), this
# compares the work done for the same arrivals.
eq_run() {
    local r=$1 s=$2 rate=$3 out=$WORK/eq-$1-$2.txt line check=ok pid=${PID[$2]} before after obefore oafter
    before=$(cpu_ticks "$pid")
    obefore=$(cpu_ticks "$PID_origin")
    load_run "$r" "$s" "eq" "$out" open "${URL[$s]}" "$rate" "$OPEN_DURATION" 64
    after=$(cpu_ticks "$pid")
    oafter=$(cpu_ticks "$PID_origin")
    line=$(tail -1 "$out")
    local sent cpu ocpu
    sent=$(kv "$line" sent)
    [[ $(kv "$line" bad) == 0 && ${sent:-0} -gt 0 ]] || check="FAIL: $line"
    [[ $check == ok ]] || FAILED=1
    cpu=$(awk -v a="$before" -v b="$after" -v n="$sent" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t * 1e6 / n }')
    ocpu=$(awk -v a="$obefore" -v b="$oafter" -v n="$sent" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t * 1e6 / n }')
    printf '%s\t%s\teq\t%s\t%s\t%s\t%s\t%s\t0\t%s\t%s\t%s\n' "$r" "$s" "$(kv "$line" rate)" \
        "$(kv "$line" p50_us)" "$(kv "$line" p99_us)" "$sent" "$(kv "$line" bad)" "$cpu" "$ocpu" "$check" >>"$RESULTS"
    log "round $r $s equal rate ($rate/s): ${cpu} us CPU/req, origin ${ocpu}; $line"
}

# stream_run ROUND SCENARIO: 20 MiB bodies through 4 connections; MiB/s in the rps column.
stream_run() {
    local r=$1 s=$2 out=$WORK/stream-$1-$2.txt pid=${PID[$2]} hwm before=0 check=ok
    if [[ $s == D ]]; then
        echo 5 >"/proc/$pid/clear_refs" # reset the peak-RSS mark
        before=$(rss_kb "$pid" VmRSS)
    fi
    local args=(-t1 -c4 "-d${STREAM_DURATION}s" --latency --timeout 10s)
    [[ -n ${HDR[$s]} ]] && args+=(-H "${HDR[$s]}")
    timeout $((STREAM_DURATION + 30)) "${CLIENT_PIN[@]}" wrk "${args[@]}" "${URL[$s]}/full" >"$out" 2>&1 ||
        die "wrk (stream) failed for scenario $s: $(cat "$out")"
    # The peak's growth over the RSS just before this run (what streaming itself added).
    hwm=$([[ $s == D ]] && echo $(($(rss_kb "$pid" VmHWM) - before)) || echo -)
    local rps requests non2xx
    rps=$(awk '/^Requests\/sec:/ { print $2; exit }' "$out")
    requests=$(awk '/ requests in / { print $1; exit }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$out")
    non2xx=${non2xx:-0}
    [[ -n $requests && $requests -gt 0 && $non2xx == 0 ]] || check="FAIL: $requests requests, $non2xx non-2xx"
    [[ $check == ok ]] || FAILED=1
    printf '%s\t%s\tstream\t%s\t-\t-\t%s\t%s\t0\t-\t%s\t%s\n' "$r" "$s" \
        "$(awk -v x="$rps" 'BEGIN { printf "%.1f", x * 20 }')" "$requests" "$non2xx" "$hwm" "$check" >>"$RESULTS"
    log "round $r $s stream: $rps bodies/s ($(awk -v x="$rps" 'BEGIN { printf "%.0f", x * 20 }') MiB/s), peak RSS growth ${hwm} kB, $check"
}

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for ((r = 1; r <= ROUNDS; r++)); do
    # Interleave, rotating the starting scenario each round so no target always goes first.
    n=${#SCENARIOS[@]}
    for ((k = 0; k < n; k++)); do
        s=${SCENARIOS[$(((k + r - 1) % n))]}
        wrk_run "$s" "$CONNS" "$WARMUP" "$WORK/warmup.txt"
        measure "$r" "$s" "c$CONNS" "$CONNS" "$DURATION"
        measure "$r" "$s" c1 1 "$C1_DURATION"
    done
    # Open loop at 50 % and 80 % of this round's nginx maximum, C and D alternating first.
    max=$(awk -F'\t' -v r="$r" -v l="c$CONNS" '$1 == r && $2 == "C" && $3 == l { printf "%d", $4 }' "$RESULTS")
    for pct in 50 80; do
        rate=$((max * pct / 100))
        if ((r % 2)); then pair=(C D); else pair=(D C); fi
        for s in "${pair[@]}"; do open_run "$r" "$s" "$pct" "$rate"; done
    done
    # CPU per request at one fixed rate for B, C and D (rotating order).
    dmax=$(awk -F'\t' -v r="$r" -v l="c$CONNS" '$1 == r && $2 == "D" && $3 == l { printf "%d", $4 }' "$RESULTS")
    trio=(B C D)
    for ((k = 0; k < 3; k++)); do eq_run "$r" "${trio[$(((k + r - 1) % 3))]}" $((dmax / 2)); done
    if ((r % 2)); then pair=(C D); else pair=(D C); fi
    for s in "${pair[@]}"; do stream_run "$r" "$s"; done
done

# Cold decisions: COLD_N images the guard has not seen, one request each on one connection.
read -r _ _ _ MISSES_BEFORE <<<"$(guard_counters)"
load_run 0 D cold "$WORK/cold.txt" each "http://127.0.0.1:$P_GUARD/api/v1/images/i/benchcold-{i}.png" "$COLD_N" 0 0
read -r _ _ _ MISSES_AFTER <<<"$(guard_counters)"
COLD=$(tail -1 "$WORK/cold.txt")
COLD_MISSES=$((MISSES_AFTER - MISSES_BEFORE))
COLD_CHECK=ok
[[ $(kv "$COLD" ok) == "$COLD_N" ]] || COLD_CHECK="FAIL: $COLD"
((COLD_MISSES >= COLD_N)) || COLD_CHECK="FAIL: only $COLD_MISSES fact-cache misses for $COLD_N cold requests"
[[ $COLD_CHECK == ok ]] || FAILED=1
log "cold: $COLD ($COLD_MISSES fact-cache misses) $COLD_CHECK"

# Streaming once more with bodies STREAM_BIG_MIB large (10× the rounds' 20 MiB): the guard's
# peak RSS must not grow with the body size (it streams; buffering would add 4 × the body).
echo 5 >"/proc/$PID_guard/clear_refs"
BIG_BEFORE=$(rss_kb "$PID_guard" VmRSS)
timeout $((STREAM_DURATION * 2 + 60)) "${CLIENT_PIN[@]}" wrk -t1 -c4 "-d$((STREAM_DURATION * 2))s" --timeout 30s \
    -H "${HDR[D]}" "${URL[D]}/full?mib=$STREAM_BIG_MIB" >"$WORK/stream-big.txt" 2>&1 ||
    die "wrk (big stream) failed: $(cat "$WORK/stream-big.txt")"
BIG_HWM=$(($(rss_kb "$PID_guard" VmHWM) - BIG_BEFORE))
BIG_REQUESTS=$(awk '/ requests in / { print $1; exit }' "$WORK/stream-big.txt")
BIG_NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' "$WORK/stream-big.txt")
BIG_CHECK=ok
[[ -n $BIG_REQUESTS && $BIG_REQUESTS -gt 0 && ${BIG_NON2XX:-0} == 0 ]] ||
    { BIG_CHECK="FAIL: $BIG_REQUESTS requests, ${BIG_NON2XX:-0} non-2xx"; FAILED=1; }
log "stream ${STREAM_BIG_MIB} MiB bodies through D: $BIG_REQUESTS bodies, peak RSS growth ${BIG_HWM} kB over ${BIG_BEFORE} kB, $BIG_CHECK"

# RSS: idle after the load, then with HOLD idle keep-alive connections.
sleep 2
RSS_IDLE_END=$(rss_kb "$PID_guard" VmRSS)
"$BIN/examples/bench_load" hold "${URL[D]}" "$HOLD" 600 0 200 "${HDR[D]}" >"$WORK/hold.txt" 2>&1 &
HOLD_PID=$!
PIDS+=($HOLD_PID)
for ((i = 0; i < 600; i++)); do
    grep -q '^held=' "$WORK/hold.txt" && break
    kill -0 "$HOLD_PID" 2>/dev/null || die "bench_load hold exited: $(cat "$WORK/hold.txt")"
    sleep 0.1
done
grep -q '^held=' "$WORK/hold.txt" || die "bench_load hold did not open $HOLD connections in 60 s"
sleep 1
RSS_HOLD=$(rss_kb "$PID_guard" VmRSS)
HOLD_LINE=$(cat "$WORK/hold.txt")
kill "$HOLD_PID" 2>/dev/null || true
wait "$HOLD_PID" 2>/dev/null || true
HOLD_CHECK=ok
[[ $HOLD_LINE == "held=$HOLD bad=0" ]] || { HOLD_CHECK="FAIL: $HOLD_LINE"; FAILED=1; }
log "RSS: start ${RSS_IDLE_START} kB, idle after load ${RSS_IDLE_END} kB, with $HOLD idle connections ${RSS_HOLD} kB ($HOLD_LINE)"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# === report ===
REPORT=$OUT/report.md
{
    echo "# invoke-guard loopback benchmark"
    echo
    echo "- date: $STARTED; rounds: $ROUNDS (interleaved, rotating order); wrk -t1 -c$CONNS -d${DURATION}s and -c1 -d${C1_DURATION}s after a ${WARMUP}s warm-up"
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(uname -sr)"
    echo "- versions: $(rustc --version), $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk --version 2>&1 | head -1 | awk '{ print $1, $2 }')," \
        "hyper $(awk '/^name = "hyper"$/ { getline; gsub(/"/, "", $3); print $3 }' "$ROOT/Cargo.lock")"
    echo "- runtime threads: TOKIO_WORKER_THREADS=$WORKERS for B and D/F; origin 1 thread; nginx $WORKERS worker process(es); pinning: $([[ $PIN == 1 ]] && echo 'wrk CPU 0, servers CPU 1' || echo none)"
    echo "- other load: CPUs $BUSY_START busy in the second before the servers started; load average at start / end: $LOAD_START / $LOAD_END;" \
        "top processes by lifetime %CPU at start: $TOP_START"
    echo "- D: GET $PATH_IMG as alice (rule images.get, image.read(path.image_name), warm facts); F: same as bob (403)"
    echo
} >"$REPORT"
awk -F'\t' -v conns="c$CONNS" -v workers="$WORKERS" -v hold="$HOLD" \
    -v cold_p50="$(kv "$COLD" p50_us)" -v cold_p99="$(kv "$COLD" p99_us)" -v cold_max="$(kv "$COLD" max_us)" \
    -v cold_n="$COLD_N" -v cold_check="$COLD_CHECK" -v hold_check="$HOLD_CHECK" \
    -v rss_start="$RSS_IDLE_START" -v rss_end="$RSS_IDLE_END" -v rss_hold="$RSS_HOLD" \
    -v big_mib="$STREAM_BIG_MIB" -v big_hwm="$BIG_HWM" -v big_check="$BIG_CHECK" '
function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
# stat KEY: "median [min–max]" over rounds of values v[KEY, round]
function stat(key, fmt,   a, n, r, med) {
    n = 0
    for (r = 1; r <= rounds; r++) if ((key, r) in v) a[++n] = v[key, r] + 0
    if (n == 0) return "-"
    sortn(a, n)
    med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    return sprintf(fmt " [" fmt "–" fmt "]", med, a[1], a[n])
}
function med(key,   a, n, r) {
    n = 0
    for (r = 1; r <= rounds; r++) if ((key, r) in v) a[++n] = v[key, r] + 0
    if (n == 0) return "-"
    sortn(a, n)
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
# ratio of two per-round values, per round, then median [range]
function ratio(num, den, name,   r) {
    for (r = 1; r <= rounds; r++) if ((num, r) in v && (den, r) in v && v[den, r] > 0) v[name, r] = v[num, r] / v[den, r]
    return stat(name, "%.2f")
}
function delta(a, b, name,   r) {
    for (r = 1; r <= rounds; r++) if ((a, r) in v && (b, r) in v) v[name, r] = v[a, r] - v[b, r]
    return stat(name, "%+.0f")
}
NR == 1 { next }
{
    r = $1; s = $2; l = $3
    if (r > rounds) rounds = r
    v[s, l, "rps", r] = $4; v[s, l, "p50", r] = $5; v[s, l, "p99", r] = $6
    v[s, l, "cpu", r] = $10; v[s, l, "ocpu", r] = $11
    if ($12 !~ /^ok/) bad[s] = bad[s] " r" r "/" l ": " $12
    if ($9 > 0) errs[s] += $9
}
END {
    split("A B C D F P", order, " ")
    name["A"] = "A origin direct"; name["B"] = "B hyper passthrough"; name["C"] = "C nginx"
    name["D"] = "D invoke-guard allow"; name["F"] = "F invoke-guard deny (403)"; name["P"] = "P base guard (BASE_GUARD), allow"
    print "| target | rps @ " conns " | p50 / p99 @ " conns " (µs) | p50 @ c1 (µs) | p99 @ c1 (µs) | CPU µs/req (server) | origin CPU µs/req | checks |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= 6; i++) {
        if (!((order[i], conns, "rps", 1) in v)) continue
        s = order[i]
        c = (s in bad) ? "FAIL" bad[s] : "ok"
        if (s in errs) c = c ", socket errors " errs[s]
        printf "| %s | %s | %.0f / %.0f | %s | %.0f | %s | %s | %s |\n", name[s],
            stat(s SUBSEP conns SUBSEP "rps", "%.0f"),
            med(s SUBSEP conns SUBSEP "p50"), med(s SUBSEP conns SUBSEP "p99"),
            stat(s SUBSEP "c1" SUBSEP "p50", "%.0f"), med(s SUBSEP "c1" SUBSEP "p99"),
            stat(s SUBSEP conns SUBSEP "cpu", "%.1f"),
            (s == "A" || s == "F") ? "-" : stat(s SUBSEP conns SUBSEP "ocpu", "%.1f"), c
    }
    print ""
    print "Values are median [min–max] over rounds; the other latency columns are medians over rounds. CPU is for " conns " (at c1 it is dominated by wake-ups). Ratios are computed per round (same conditions), then summarized:"
    print ""
    print "| ratio | median [min–max] |"
    print "|---|---|"
    K = SUBSEP conns SUBSEP
    print "| CPU/req D/B (guard vs plain hyper) | " ratio("D" K "cpu", "B" K "cpu", "r1") " |"
    print "| CPU/req D/C (guard vs nginx) | " ratio("D" K "cpu", "C" K "cpu", "r2") " |"
    print "| CPU/req F/B (deny vs plain hyper) | " ratio("F" K "cpu", "B" K "cpu", "r3") " |"
    print "| CPU/req C/B (nginx vs plain hyper) | " ratio("C" K "cpu", "B" K "cpu", "r4") " |"
    print "| rps D/B | " ratio("D" K "rps", "B" K "rps", "r5") " |"
    print "| rps D/C | " ratio("D" K "rps", "C" K "rps", "r6") " |"
    print "| rps F/B | " ratio("F" K "rps", "B" K "rps", "r7") " |"
    E = SUBSEP "eq" SUBSEP
    print "| CPU/req at one fixed rate (half of D at c64), D/B | " ratio("D" E "cpu", "B" E "cpu", "r12") " (D " stat("D" E "cpu", "%.1f") ", B " stat("B" E "cpu", "%.1f") ", C " stat("C" E "cpu", "%.1f") " µs; rate " stat("D" E "rps", "%.0f") "/s) |"
    print "| CPU/req at that rate, D/C | " ratio("D" E "cpu", "C" E "cpu", "r13") " |"
    print "| p50 @ c1, D − B (µs) | " delta("D" SUBSEP "c1" SUBSEP "p50", "B" SUBSEP "c1" SUBSEP "p50", "r8") " |"
    print "| p50 @ c1, D − C (µs) | " delta("D" SUBSEP "c1" SUBSEP "p50", "C" SUBSEP "c1" SUBSEP "p50", "r9") " |"
    if (("P", conns, "cpu", 1) in v) {
        print "| CPU/req D/P (this guard vs BASE_GUARD) | " ratio("D" K "cpu", "P" K "cpu", "r10") " |"
        print "| rps D/P | " ratio("D" K "rps", "P" K "rps", "r11") " |"
    }
    print ""
    print "Open loop (fixed rate, 64 connections, latency from the due time of each request; rate = 50 % / 80 % of nginx rps @ " conns " in the same round):"
    print ""
    print "| target | achieved rate @ 50 % | p50 / p99 @ 50 % (µs) | achieved rate @ 80 % | p50 / p99 @ 80 % (µs) |"
    print "|---|---|---|---|---|"
    split("C D", oo, " ")
    for (i = 1; i <= 2; i++) {
        s = oo[i]
        printf "| %s | %s | %s / %s | %s | %s / %s |\n", name[s], stat(s SUBSEP "o50" SUBSEP "rps", "%.0f"),
            med(s SUBSEP "o50" SUBSEP "p50"), stat(s SUBSEP "o50" SUBSEP "p99", "%.0f"),
            stat(s SUBSEP "o80" SUBSEP "rps", "%.0f"), med(s SUBSEP "o80" SUBSEP "p50"), stat(s SUBSEP "o80" SUBSEP "p99", "%.0f")
    }
    print ""
    print "Streaming (20 MiB bodies, wrk -c4): C " stat("C" SUBSEP "stream" SUBSEP "rps", "%.0f") " MiB/s, D " stat("D" SUBSEP "stream" SUBSEP "rps", "%.0f") " MiB/s; guard peak RSS growth while streaming " med("D" SUBSEP "stream" SUBSEP "ocpu") " kB (median over rounds)."
    print ""
    print "Cold decisions (" cold_n " images never seen, one request each, c1): p50 " cold_p50 " µs, p99 " cold_p99 " µs, max " cold_max " µs (" cold_check "). Guard RSS: " rss_start " kB at start, " rss_end " kB idle after the load, " rss_hold " kB with " hold " idle keep-alive connections (" hold_check ")."
    print ""
    # The issue #12 targets. Each verdict reads the median of the per-round ratios above.
    o50 = ratio("D" SUBSEP "o50" SUBSEP "p99", "C" SUBSEP "o50" SUBSEP "p99", "t1"); m50 = med("t1")
    o80 = ratio("D" SUBSEP "o80" SUBSEP "p99", "C" SUBSEP "o80" SUBSEP "p99", "t2"); m80 = med("t2")
    st = ratio("D" SUBSEP "stream" SUBSEP "rps", "C" SUBSEP "stream" SUBSEP "rps", "t3"); mst = med("t3")
    for (r = 1; r <= rounds; r++) if (("D", "stream", "ocpu", r) in v) v["t4", r] = v["D", "stream", "ocpu", r] / 1024
    grow = med("t4")
    print "| target (issue #12; WORKERS=" workers ") | measured (median [min–max]) | goal | |"
    print "|---|---|---|---|"
    printf "| rps @ %s, guard allow / nginx (%d guard threads, %d nginx workers) | %s | ≥ 1.0 | %s |\n", conns, workers, workers, stat("r6", "%.2f"), verdict(med("r6") >= 1.0)
    printf "| CPU/req, guard allow / plain hyper (closed loop @ %s) | %s | ≤ 1.3 | %s |\n", conns, stat("r1", "%.2f"), verdict(med("r1") <= 1.3)
    printf "| CPU/req, guard allow / plain hyper (same fixed rate) | %s | ≤ 1.3 | %s |\n", stat("r12", "%.2f"), verdict(med("r12") <= 1.3)
    printf "| p50 @ c1, guard − nginx (µs) | %s | ≤ +10 | %s |\n", stat("r9", "%+.0f"), verdict(med("r9") <= 10)
    printf "| open loop @ 50 %%: p99 guard / nginx | %s | ≤ 1.5 | %s |\n", o50, verdict(m50 != "-" && m50 <= 1.5)
    printf "| open loop @ 80 %%: p99 guard / nginx | %s | ≤ 1.5 | %s |\n", o80, verdict(m80 != "-" && m80 <= 1.5)
    printf "| cold decision p99 (µs, whole request) | %s | ≤ 1000 | %s |\n", cold_p99, verdict(cold_p99 != "" && cold_p99 <= 1000)
    printf "| streaming 20 MiB: guard / nginx throughput | %s | ≥ 0.9 | %s |\n", st, verdict(mst != "-" && mst >= 0.9)
    big = big_hwm / 1024
    printf "| streaming: guard peak RSS growth during the run (MiB), 4 × 20 MiB (median of rounds) / 4 × %d MiB in flight (%s) | %.1f / %.1f | flat in body size (≤ +8 MiB for 10× the body) | %s |\n", big_mib, big_check, grow, big, verdict(big_check == "ok" && big - grow <= 8)
    printf "| RSS idle (MiB, after the load) | %.1f | ≤ 32 | %s |\n", rss_end / 1024, verdict(rss_end / 1024 <= 32)
    printf "| RSS with %d idle keep-alive connections (MiB) | %.1f | ≤ 64 | %s |\n", hold, rss_hold / 1024, verdict(rss_hold / 1024 <= 64)
    print "| real InvokeAI behind the guard vs direct, p50 ratio | see scripts/bench/invokeai.sh | ≤ 1.05 | not in this run |"
}
function verdict(ok) { return ok ? "met" : "**missed**" }
' "$RESULTS" >>"$REPORT"
{
    echo
    echo "Raw rows: \`$RESULTS\`. Loopback only, 2 shared cores: rps moves by tens of percent between"
    echo "rounds and runs; compare ratios from one run, never absolute numbers across days."
} >>"$REPORT"

echo
cat "$REPORT"
if [[ $FAILED != 0 ]]; then
    log "a response-code check FAILED (see the checks column)"
    exit 1
fi
