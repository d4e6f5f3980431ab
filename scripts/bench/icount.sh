#!/usr/bin/env bash
# Instructions per request under callgrind (docs/benchmarks.md, "Issue #22: instructions per
# request (callgrind)").
#
#   scripts/bench/icount.sh                    all contenders, the table and the per-function files
#   ONLY="allow deny" scripts/bench/icount.sh  some contenders only (the gate for a hot-path change)
#
# User-space instructions do not depend on what else the machine is doing, so this is the
# regression gate for hot-path work (wall-clock rps and latency: scripts/bench/run.sh).
# Contenders, each on 127.0.0.1, each with its own fresh origin:
#   origin       examples/bench_origin alone (fixed 1 KiB 200)
#   passthrough  examples/bench_passthrough (hyper-util pooled client, one runtime thread)
#   nginx        Debian nginx, one process (master_process off), keep-alive upstream
#   allow        invoke-guard, scenario D of run.sh: GET /api/v1/images/i/{alice's private
#                image} with alice's token (rule images.get), default log level info
#   deny         the same request with bob's token: 403 answered by the guard (no upstream leg)
# Every server runs under `valgrind --tool=callgrind` (the origin too, so its own count behind
# each contender is measured). A run: start, WARM requests on one connection (facts and pools
# warm), then N requests one at a time on one new keep-alive connection (examples/bench_load
# `each`), then SIGTERM. Each contender runs twice, N = SMALL and N = LARGE; the difference of
# the two totals divided by LARGE - SMALL cancels start-up, warm-up and shutdown exactly.
# Background threads that run on a clock, not per request (the guard's `facts-watcher`, which
# polls the database every 50 ms: its count grows with valgrind's wall time), are left out of
# the per-request figure and reported beside it. Repeatable to within about 100
# instructions per request between runs of one binary (timer and reaper wake-ups).
#
# Prints instructions per request for each contender (and for the origin behind it) with the
# ratios, and writes under OUT (default target/bench/icount):
#   summary.md             the printed table
#   functions-NAME.txt     per function: self instructions per request (callgrind_annotate of both
#                          runs, subtracted, divided by the request difference), largest first
#   functions-NAME-inclusive.txt  per function with everything it called (where a phase's cost is)
#   functions-NAME-origin.txt  self cost of the origin behind NAME
#   upstream-requests.txt  the request head each proxy sends upstream for the same client request
#                          (captured, byte for byte, by a recording origin; not under valgrind)
# Knobs: SMALL=300 LARGE=1500 WARM=50 TOP=25 ONLY="origin passthrough nginx allow deny"
#   SKIP_BUILD=0 KEEP=0 (1: keep the work dir with the raw callgrind files) GUARD=path (another
#   guard binary, e.g. one built from main, measured as allow/deny) GUARD_LOG=info
#   GUARD_LOG_FORMAT=text (or json) OUT=dir
# Needs: cargo, curl, python3; installs valgrind and nginx-light with apt-get when missing (root).
set -euo pipefail

SMALL=${SMALL:-300}
LARGE=${LARGE:-1500}
WARM=${WARM:-50}
TOP=${TOP:-25}
ONLY=${ONLY:-origin passthrough nginx allow deny}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
GUARD_LOG=${GUARD_LOG:-info}
GUARD_LOG_FORMAT=${GUARD_LOG_FORMAT:-text}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
GUARD=${GUARD:-$BIN/invoke-guard}
OUT=${OUT:-$TARGET_DIR/bench/icount}
# Absolute: nginx resolves its paths against its own prefix, not the working directory.
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
FIXTURE=invokeai-6.14.2-rich
MANIFEST=$ROOT/tests/fixtures/$FIXTURE.json

log() { printf '[icount] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $GUARD_LOG_FORMAT == text || $GUARD_LOG_FORMAT == json ]] || die "GUARD_LOG_FORMAT: text or json"
((LARGE > SMALL)) || die "LARGE ($LARGE) must be larger than SMALL ($SMALL)"

# === processes: every one we start is recorded and stopped on every exit path ===
PIDS=()
WORK=""
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 || $status -ne 0 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# === tools (idempotent: apt-get only for what is missing) ===
apt_install() {
    [[ $(id -u) == 0 ]] || die "$1 is missing; install it (apt-get install $2) or run as root"
    log "installing $2 with apt-get"
    timeout 300 apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$2" >/dev/null
}
for t in curl cargo python3; do command -v $t >/dev/null || die "$t is required"; done
command -v valgrind >/dev/null || apt_install valgrind valgrind
command -v callgrind_annotate >/dev/null || die "callgrind_annotate not found after installing valgrind"
NGINX=$(command -v nginx || true)
[[ -n $NGINX ]] || NGINX=/usr/sbin/nginx
if [[ " $ONLY " == *" nginx "* && ! -x $NGINX ]]; then
    apt_install nginx nginx-light
    NGINX=/usr/sbin/nginx
fi

# === build ===
if [[ $SKIP_BUILD != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet --bin invoke-guard \
        --example bench_origin --example bench_passthrough --example bench_fixture --example bench_load)
fi
for b in "$GUARD" "$BIN/examples/bench_origin" "$BIN/examples/bench_passthrough" "$BIN/examples/bench_fixture" "$BIN/examples/bench_load"; do
    [[ -x $b ]] || die "missing $b (run without SKIP_BUILD=1)"
done

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/work.XXXXXX")
rm -f "$OUT"/functions-*.txt

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# === fixture: a private copy of the database, tokens signed with its secret ===
cp "$ROOT/tests/fixtures/$FIXTURE.db" "$WORK/invokeai.db"
chmod u+w "$WORK/invokeai.db"
: >"$WORK/empty.toml"
fixture() { "$BIN/examples/bench_fixture" "$MANIFEST" "$@"; }
IMAGE=$(fixture get /images/alice_private_1/image_name)
TOKEN_ALICE=$(fixture token alice)
TOKEN_BOB=$(fixture token bob)
PATH_IMG=/api/v1/images/i/$IMAGE

# Valgrind: instructions only (the default event), one output file per thread so clock-driven
# background threads can be told apart from the request path.
VG=(valgrind --tool=callgrind --separate-threads=yes --dump-instr=no --compress-strings=no
    --compress-pos=no)

# wait_ok URL PID SECONDS: until URL answers (any HTTP status), or fail if PID died.
wait_ok() {
    local url=$1 pid=$2 secs=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || die "process for $url exited; see $WORK/*.log"
        [[ $(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$url" 2>/dev/null) != 000 ]] && return 0
        sleep 0.1
    done
    die "$url not ready after $secs s"
}

# stop PID: SIGTERM, then wait for it (valgrind writes its files on the way out).
stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 1200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

nginx_conf() { # DIR LISTEN_PORT ORIGIN_PORT
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    upstream origin {
        server 127.0.0.1:$3;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$2;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# start_proxy NAME PORT ORIGIN_PORT WRAP...: start contender NAME's server (under WRAP, e.g. the
# valgrind command, or nothing); sets PROXY_PID and READY_URL.
start_proxy() {
    local name=$1 p=$2 po=$3 tag=$4
    shift 4
    case $name in
    passthrough)
        TOKIO_WORKER_THREADS=1 "$@" "$BIN/examples/bench_passthrough" "127.0.0.1:$p" "127.0.0.1:$po" \
            >"$WORK/$tag.log" 2>&1 &
        READY_URL=http://127.0.0.1:$p/
        ;;
    nginx)
        nginx_conf "$WORK/$tag.nginx" "$p" "$po"
        "$@" "$NGINX" -p "$WORK/$tag.nginx" -c "$WORK/$tag.nginx/nginx.conf" -e "$WORK/$tag.nginx/error.log" \
            >"$WORK/$tag.log" 2>&1 &
        READY_URL=http://127.0.0.1:$p/
        ;;
    allow | deny)
        local pa
        pa=$(port)
        TOKIO_WORKER_THREADS=1 INVOKE_GUARD_LOG=$GUARD_LOG "$@" "$GUARD" serve \
            --config "$WORK/guard.toml" --listen "127.0.0.1:$p" --upstream "http://127.0.0.1:$po" \
            --db "$WORK/invokeai.db" --routes "$ROOT/routes.toml" --ledger "$WORK/$tag.ledger.db" \
            --admin-listen "127.0.0.1:$pa" >"$WORK/$tag.out" 2>"$WORK/$tag.log" &
        READY_URL=http://127.0.0.1:$pa/readyz
        ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
}
# The guard's defaults, except that SIGTERM need not wait the 5 s readiness delay.
printf '[limits]\nshutdown_delay_ms = 0\n\n[log]\nformat = "%s"\n' "$GUARD_LOG_FORMAT" >"$WORK/guard.toml"

declare -A WANT HDR
WANT=([origin]=200 [passthrough]=200 [nginx]=200 [allow]=200 [deny]=403)
HDR=([origin]="" [passthrough]="" [nginx]="" [allow]="Authorization: Bearer $TOKEN_ALICE"
    [deny]="Authorization: Bearer $TOKEN_BOB")

# run NAME N: one measured run of contender NAME with N requests.
run() {
    local name=$1 n=$2 po p url hdr=() out line
    po=$(port)
    "${VG[@]}" --callgrind-out-file="$WORK/$name.$n.origin.cg" "$BIN/examples/bench_origin" \
        "127.0.0.1:$po" >"$WORK/$name.$n.origin.log" 2>&1 &
    local origin_pid=$!
    PIDS+=("$origin_pid")
    wait_ok "http://127.0.0.1:$po/" "$origin_pid" 120
    if [[ $name == origin ]]; then
        p=$po
        local proxy_pid=""
    else
        p=$(port)
        start_proxy "$name" "$p" "$po" "$name.$n" "${VG[@]}" --callgrind-out-file="$WORK/$name.$n.proxy.cg"
        local proxy_pid=$PROXY_PID
        wait_ok "$READY_URL" "$proxy_pid" 300
        if [[ $name == allow || $name == deny ]]; then
            # Ready means the database answered; wait for 200 (not 503) from readyz.
            local i
            for ((i = 0; i < 600; i++)); do
                [[ $(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$READY_URL") == 200 ]] && break
                sleep 0.1
            done
        fi
    fi
    url=http://127.0.0.1:$p$PATH_IMG
    [[ -n ${HDR[$name]} ]] && hdr=("${HDR[$name]}")
    for phase in warm measured; do
        local count=$WARM
        [[ $phase == measured ]] && count=$n
        out=$("$BIN/examples/bench_load" each "$url" "$count" 0 0 "${WANT[$name]}" "${hdr[@]}")
        line="sent=$count ok=$count bad=0"
        [[ $out == "$line "* ]] || die "$name ($phase, N=$n): expected $count x ${WANT[$name]}, got: $out"
    done
    [[ -n $proxy_pid ]] && stop "$proxy_pid"
    stop "$origin_pid"
    log "$name N=$n done"
}

# === the recording origin: what each proxy sends upstream, byte for byte ===
capture() {
    local name=$1 pc p out
    pc=$(port)
    python3 - "$pc" "$WORK/upstream.$name.bin" "$PATH_IMG" <<'PY' &
# Answers every request (keep-alive, one thread a connection: readiness probes come through the
# proxy too); writes the head of the first request for PATH (the measured one) and exits.
import os, socket, sys, threading
port, path, target = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
body = b'{"ok":true}'
resp = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
def serve(c):
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        c.sendall(resp)
        if head.split(b" ")[1:2] == [target]:
            open(path, "wb").write(head + b"\r\n\r\n")
            os._exit(0)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(8)
srv.settimeout(60)
open(path + ".ready", "w").close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
    local cap_pid=$!
    PIDS+=("$cap_pid")
    for ((i = 0; i < 50; i++)); do [[ -e $WORK/upstream.$name.bin.ready ]] && break; sleep 0.1; done
    p=$(port)
    start_proxy "$name" "$p" "$pc" "capture.$name"
    local proxy_pid=$PROXY_PID
    for ((i = 0; i < 100; i++)); do
        [[ $(curl -sS -o /dev/null -w '%{http_code}' --max-time 1 "$READY_URL" 2>/dev/null) == 200 ]] && break
        sleep 0.1
    done
    local hdr=()
    [[ -n ${HDR[$name]} ]] && hdr=("${HDR[$name]}")
    "$BIN/examples/bench_load" each "http://127.0.0.1:$p$PATH_IMG" 1 0 0 200 "${hdr[@]}" >/dev/null || true
    stop "$proxy_pid"
    wait "$cap_pid" 2>/dev/null || true
}

for name in $ONLY; do
    case $name in origin | passthrough | nginx | allow | deny) ;; *) die "unknown contender $name" ;; esac
done
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for name in $ONLY; do
    run "$name" "$SMALL"
    run "$name" "$LARGE"
done
CAPTURED=()
for name in $ONLY; do
    case $name in passthrough | nginx | allow)
        capture "$name"
        CAPTURED+=("$name")
        ;;
    esac
done

# === analysis ===
python3 - "$WORK" "$OUT" "$SMALL" "$LARGE" "$TOP" "$ONLY" "${CAPTURED[*]:-}" <<'PY'
import collections, glob, os, re, subprocess, sys
work, out, small, large, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
names, captured = sys.argv[6].split(), sys.argv[7].split()
dn = large - small
# Threads that run on a clock rather than per request, left out of the per-request figure: the
# guard's facts watcher, the one thread that both sleeps (std::thread::sleep) and queries SQLite
# (its loop is inlined into the thread's entry, so its own name is gone). The log writer thread
# sleeps but never queries; the blocking pool queries but never sleeps: both stay counted.
def background(counts):
    return any("nanosleep" in k for k in counts) and any(k.startswith("sqlite3") for k in counts)

def thread_files(prefix):
    return sorted(glob.glob(prefix + "-*")) or sorted(glob.glob(prefix))

def per_function(path, inclusive=False):
    """Instructions per function of one callgrind file (callgrind_annotate, no threshold): self
    cost, or with `inclusive` the cost of the function and everything it called."""
    flag = "--inclusive=yes" if inclusive else "--inclusive=no"
    text = subprocess.run(["callgrind_annotate", "--threshold=100", flag, path],
                          capture_output=True, text=True, check=True).stdout
    total, fns, body = 0, collections.Counter(), False
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        if re.match(r"^\s*Ir\s+file:function", line):
            body = True
            continue
        if body:
            m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)\s*$", line)
            if m:
                fn = re.sub(r"\s+\[[^\]]*\]$", "", m.group(2))
                fn = fn.split(":", 1)[1] if re.match(r"^[^:]*(\.\w+|\?\?\?):", fn) else fn
                fns[fn] += int(m.group(1).replace(",", ""))
    return total, fns

def load(prefix):
    """(request-path total, background total, per-function self Counter, inclusive Counter)
    over a run's thread files."""
    req, bg, fns, incl = 0, 0, collections.Counter(), collections.Counter()
    for f in thread_files(prefix):
        total, counts = per_function(f)
        if background(counts):
            bg += total
            continue
        req += total
        fns.update(counts)
        incl.update(per_function(f, inclusive=True)[1])
    return req, bg, fns, incl

def diff(name, role):
    a = load(f"{work}/{name}.{small}.{role}.cg")
    b = load(f"{work}/{name}.{large}.{role}.cg")
    per_req = (b[0] - a[0]) / dn
    bg = (b[1] - a[1]) / dn
    fns = {k: (b[2].get(k, 0) - a[2].get(k, 0)) / dn for k in set(a[2]) | set(b[2])}
    rows = sorted(fns.items(), key=lambda kv: -abs(kv[1]))
    suffix = "" if role == "proxy" or name == "origin" else "-origin"
    with open(f"{out}/functions-{name}{suffix}.txt", "w") as fh:
        fh.write(f"# {name} ({role}): self instructions per request, (N={large} run - N={small} run) / {dn}\n")
        fh.write(f"# total {per_req:,.0f} per request; sum of the rows below {sum(fns.values()):,.0f}\n")
        for k, v in rows:
            if abs(v) >= 0.5:
                fh.write(f"{v:12,.0f}  {k}\n")
    if role == "proxy":
        # Inclusive: a function and all it called (recursive and shared callees can make rows
        # add up to more than the total: read a row, not a sum).
        incl = {k: (b[3].get(k, 0) - a[3].get(k, 0)) / dn for k in set(a[3]) | set(b[3])}
        with open(f"{out}/functions-{name}-inclusive.txt", "w") as fh:
            fh.write(f"# {name}: inclusive instructions per request (the function and its callees), (N={large} - N={small}) / {dn}\n")
            for k, v in sorted(incl.items(), key=lambda kv: -kv[1]):
                if v >= 10:
                    fh.write(f"{v:12,.0f}  {k}\n")
    return per_req, bg, rows

res = {}
for n in names:
    role = "origin" if n == "origin" else "proxy"
    res[n] = {"self": diff(n, role)}
    if n not in ("origin",):
        res[n]["origin"] = diff(n, "origin")

def fmt(x):
    return f"{x:,.0f}"

lines = []
lines.append(f"Instructions per request (callgrind, user space; (N={large} - N={small}) / {dn}, one keep-alive connection, warm):")
lines.append("")
lines.append("| contender | instructions/request | vs plain hyper | vs nginx | origin behind it (instr/req) | background threads (instr/req, excluded) |")
lines.append("|---|---:|---:|---:|---:|---:|")
base = res.get("passthrough", {}).get("self", (None,))[0]
ngx = res.get("nginx", {}).get("self", (None,))[0]
label = {"origin": "origin alone (bench_origin)", "passthrough": "plain hyper passthrough",
         "nginx": "nginx, one process", "allow": "invoke-guard allow (alice, 200)",
         "deny": "invoke-guard deny (bob, 403)"}
for n in names:
    v, bg, _ = res[n]["self"]
    r1 = f"{v / base:.2f}x" if base else "-"
    r2 = f"{v / ngx:.2f}x" if ngx else "-"
    o = fmt(res[n]["origin"][0]) if "origin" in res[n] else "-"
    lines.append(f"| {label[n]} | {fmt(v)} | {r1} | {r2} | {o} | {fmt(bg) if bg else '0'} |")
lines.append("")
for n in names:
    _, _, rows = res[n]["self"]
    lines.append(f"Top {top} functions, {label[n]} (self instructions per request; all rows in functions-{n}.txt):")
    lines.append("")
    lines.append("| instr/req | function |")
    lines.append("|---:|---|")
    for k, v in rows[:top]:
        lines.append(f"| {fmt(v)} | `{k[:150]}` |")
    lines.append("")
if captured:
    with open(f"{out}/upstream-requests.txt", "w") as fh:
        for n in captured:
            p = f"{work}/upstream.{n}.bin"
            data = open(p, "rb").read() if os.path.exists(p) else b"(nothing captured)"
            fh.write(f"=== {n}: {len(data)} bytes\n{data.decode('latin-1')}\n")
    lines.append("Request heads sent upstream (bytes; the full heads are in upstream-requests.txt): " + ", ".join(
        f"{n} {os.path.getsize(f'{work}/upstream.{n}.bin') if os.path.exists(f'{work}/upstream.{n}.bin') else 0}" for n in captured))
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "started $STARTED; files in $OUT"
