#!/usr/bin/env bash
# Loopback whole-proxy benchmark (docs/benchmarks.md; method: anchors §2.3).
#
# Measures, in one run, interleaved over ROUNDS rounds, everything on 127.0.0.1:
#   A  origin direct                (examples/bench_origin.rs, fixed 1 KiB 200)
#   B  plain hyper passthrough      (examples/bench_passthrough.rs, pooled hyper-util client)
#   C  nginx                        (Debian nginx-light, 1 process, upstream keepalive)
#   D  invoke-guard allow path      (GET /api/v1/images/i/{alice's image}, alice's token, warm facts)
#   F  invoke-guard deny path       (the same image with bob's token: 403 from image.read)
# Load: wrk -t1 -cCONNS -dDURATION (closed loop) and wrk -t1 -c1 (latency), after a warm-up.
# CPU per request: utime+stime of the server process from /proc/PID/stat, before/after each
# run, divided by wrk's request count.
#
# Writes target/bench/report.md (and results.tsv) and prints the report. Exits non-zero when a
# response-code check failed (A–D: 0 non-2xx; F: every response 403, counted by the guard).
#
# Knobs (environment): ROUNDS=3 DURATION=5 C1_DURATION=3 WARMUP=2 CONNS=64 WORKERS=1
#   PIN=0 (1: wrk on CPU 0, servers on CPU 1)  SKIP_BUILD=0  KEEP=0 (1: keep the work dir)
# Needs: cargo, curl; installs wrk and nginx-light with apt-get when missing (as root).
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
SCENARIOS=(A B C D F)

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
command -v wrk >/dev/null || apt_install wrk wrk
NGINX=$(command -v nginx || true)
[[ -n $NGINX ]] || NGINX=/usr/sbin/nginx
[[ -x $NGINX ]] || { apt_install nginx nginx-light; NGINX=/usr/sbin/nginx; }
[[ -x $NGINX ]] || die "nginx not found after installing nginx-light"

# === build ===
if [[ $SKIP_BUILD != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet --bin invoke-guard \
        --example bench_origin --example bench_passthrough --example bench_fixture)
fi
BIN=$TARGET_DIR/release
for b in "$BIN/invoke-guard" "$BIN/examples/bench_origin" "$BIN/examples/bench_passthrough" "$BIN/examples/bench_fixture"; do
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

# === servers ===
start origin "$BIN/examples/bench_origin" "127.0.0.1:$P_ORIGIN"
wait_ok "http://127.0.0.1:$P_ORIGIN/" "$PID_origin"

TOKIO_WORKER_THREADS=$WORKERS start passthrough "$BIN/examples/bench_passthrough" "127.0.0.1:$P_PASS" "127.0.0.1:$P_ORIGIN"
wait_ok "http://127.0.0.1:$P_PASS/" "$PID_passthrough"

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
# One process doing all the work (so /proc/PID/stat is its whole cost), like worker_processes 1.
daemon off;
master_process off;
worker_processes 1;
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

TOKIO_WORKER_THREADS=$WORKERS INVOKE_GUARD_LOG=warn start guard "$BIN/invoke-guard" serve \
    --config "$WORK/empty.toml" \
    --listen "127.0.0.1:$P_GUARD" \
    --upstream "http://127.0.0.1:$P_ORIGIN" \
    --db "$WORK/invokeai.db" \
    --routes "$ROOT/routes.toml" \
    --ledger "$WORK/ledger.db" \
    --admin-listen "127.0.0.1:$P_ADMIN"
wait_ok "http://127.0.0.1:$P_ADMIN/readyz" "$PID_guard"

# Scenario table: URL, extra wrk/curl header, measured pid, expected status.
declare -A URL HDR PID WANT
URL[A]=http://127.0.0.1:$P_ORIGIN$PATH_IMG; HDR[A]=""; PID[A]=$PID_origin; WANT[A]=200
URL[B]=http://127.0.0.1:$P_PASS$PATH_IMG; HDR[B]=""; PID[B]=$PID_passthrough; WANT[B]=200
URL[C]=http://127.0.0.1:$P_NGINX$PATH_IMG; HDR[C]=""; PID[C]=$PID_nginx; WANT[C]=200
URL[D]=http://127.0.0.1:$P_GUARD$PATH_IMG; HDR[D]="Authorization: Bearer $TOKEN_ALICE"; PID[D]=$PID_guard; WANT[D]=200
URL[F]=http://127.0.0.1:$P_GUARD$PATH_IMG; HDR[F]="Authorization: Bearer $TOKEN_BOB"; PID[F]=$PID_guard; WANT[F]=403

for s in "${SCENARIOS[@]}"; do
    args=(-sS -o /dev/null -w '%{http_code}' --max-time 5)
    [[ -n ${HDR[$s]} ]] && args+=(-H "${HDR[$s]}")
    code=$(curl "${args[@]}" "${URL[$s]}")
    [[ $code == "${WANT[$s]}" ]] || die "scenario $s: expected ${WANT[$s]} from ${URL[$s]}, got $code"
done
log "all five targets answer as expected (A-D 200, F 403)"

# === measurement ===
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

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
        A | B | C)
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
done
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
    echo "- runtime threads: TOKIO_WORKER_THREADS=$WORKERS for B and D/F; origin 1 thread; nginx 1 process; pinning: $([[ $PIN == 1 ]] && echo 'wrk CPU 0, servers CPU 1' || echo none)"
    echo "- other load: CPUs $BUSY_START busy in the second before the servers started; load average at start / end: $LOAD_START / $LOAD_END;" \
        "top processes by lifetime %CPU at start: $TOP_START"
    echo "- D: GET $PATH_IMG as alice (rule images.get, image.read(path.image_name), warm facts); F: same as bob (403)"
    echo
} >"$REPORT"
awk -F'\t' -v conns="c$CONNS" '
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
    split("A B C D F", order, " ")
    name["A"] = "A origin direct"; name["B"] = "B hyper passthrough"; name["C"] = "C nginx"
    name["D"] = "D invoke-guard allow"; name["F"] = "F invoke-guard deny (403)"
    print "| target | rps @ " conns " | p50 / p99 @ " conns " (µs) | p50 @ c1 (µs) | p99 @ c1 (µs) | CPU µs/req (server) | origin CPU µs/req | checks |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= 5; i++) {
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
    print "| p50 @ c1, D − B (µs) | " delta("D" SUBSEP "c1" SUBSEP "p50", "B" SUBSEP "c1" SUBSEP "p50", "r8") " |"
    print "| p50 @ c1, D − C (µs) | " delta("D" SUBSEP "c1" SUBSEP "p50", "C" SUBSEP "c1" SUBSEP "p50", "r9") " |"
}' "$RESULTS" >>"$REPORT"
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
