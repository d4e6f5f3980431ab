#!/usr/bin/env bash
# A one-command demo: a real, unmodified InvokeAI in multiuser mode behind invoke-guard, with an
# administrator and two users, and one request that InvokeAI alone answers with another user's
# data while the guard refuses it.
#
#   scripts/demo.sh [VERSION]      VERSION: 6.12.0 (default: it leaks the most) or 6.14.2
#
# InvokeAI comes from PyPI into a cached venv outside the repo (scripts/invokeai/install.sh; about
# 7 GB and 6 minutes the first time, a no-op after). The guard is target/release/invoke-guard
# (built if missing; GUARD_BIN=... to use another). Both listen on loopback only; InvokeAI's port is
# printed for the comparison, and a browser goes to the guard's. Ctrl-C stops both (DEMO_KEEP=0
# stops them right after the comparison, for scripts).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${1:-6.12.0}"
STATE="${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/demo-$VERSION"
ROOT="$STATE/invokeai-root"
PASSWORD="${DEMO_PASSWORD:-Demo-pass-1234}"

say() { printf '\n== %s\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

say "InvokeAI $VERSION (cached venv)"
"$REPO/scripts/invokeai/install.sh" "$VERSION" >/dev/null

GUARD="${GUARD_BIN:-$REPO/target/release/invoke-guard}"
if [[ ! -x "$GUARD" ]]; then
  say "building invoke-guard (release)"
  (cd "$REPO" && cargo build --release --locked --bin invoke-guard)
fi

mkdir -p "$STATE"
rm -f "$STATE"/ledger.db*   # a fresh InvokeAI root each run: its ledger starts fresh too
INVOKE_PORT="$(free_port)"; GUARD_PORT="$(free_port)"; ADMIN_PORT="$(free_port)"
"$REPO/scripts/invokeai/start.sh" "$VERSION" "$INVOKE_PORT" "$ROOT" >/dev/null
GUARD_PID=""
cleanup() {
  [[ -n "$GUARD_PID" ]] && kill -TERM "$GUARD_PID" 2>/dev/null && wait "$GUARD_PID" 2>/dev/null || true
  "$REPO/scripts/invokeai/stop.sh" "$ROOT" || true
}
trap cleanup EXIT INT TERM

say "users, boards and images (through InvokeAI's own API)"
python3 - "http://127.0.0.1:$INVOKE_PORT" "$PASSWORD" "$STATE/demo.json" "$REPO/tests/e2e" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[4])
from igclient import Client, png
base, pw, out = sys.argv[1], sys.argv[2], sys.argv[3]
c = Client(base, cookie_jar=False)  # gzip like a browser; several users by Bearer token, so no shared jar
def ok(r, what):
    if r.status not in (200, 201):
        sys.exit(f"demo: {what}: {r.status} {r.detail()}")
    return r.json()
admin = ok(c.request("POST", "/api/v1/auth/setup", json_body={"email": "admin@demo.example", "display_name": "Admin", "password": pw}), "setup")
tok = lambda email: ok(c.request("POST", "/api/v1/auth/login", json_body={"email": email, "password": pw, "remember_me": False}), "login " + email)["token"]
admin_token = tok("admin@demo.example")
for email, name in [("alice@demo.example", "Alice"), ("bob@demo.example", "Bob")]:
    ok(c.request("POST", "/api/v1/auth/users", admin_token, json_body={"email": email, "display_name": name, "password": pw, "is_admin": False}), "create " + email)
alice = tok("alice@demo.example")
board = ok(c.request("POST", "/api/v1/boards/", alice, params={"board_name": "Alice's private board"}), "board")
image = ok(c.request("POST", "/api/v1/images/upload", alice, params={"image_category": "user", "is_intermediate": False, "board_id": board["board_id"]},
                     files=[("file", "alice.png", png(32, 32, (200, 40, 90)), "image/png")]), "upload")
json.dump({"board_id": board["board_id"], "image_name": image["image_name"]}, open(out, "w"))
PY

"$GUARD" serve --config /dev/null --listen "127.0.0.1:$GUARD_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "http://127.0.0.1:$INVOKE_PORT" --db "$ROOT/databases/invokeai.db" \
  --routes "$REPO/routes.toml" --ledger "$STATE/ledger.db" --set log.format=json --set limits.shutdown_delay_ms=0 \
  2> "$STATE/guard.log" &
GUARD_PID=$!
for _ in $(seq 1 100); do
  "$GUARD" health --config /dev/null --admin "127.0.0.1:$ADMIN_PORT" >/dev/null 2>&1 && break
  sleep 0.1
done
"$GUARD" health --config /dev/null --admin "127.0.0.1:$ADMIN_PORT" >/dev/null || { cat "$STATE/guard.log" >&2; exit 1; }

say "what Bob can see of Alice's private image"
python3 - "http://127.0.0.1:$INVOKE_PORT" "http://127.0.0.1:$GUARD_PORT" "$PASSWORD" "$STATE/demo.json" "$REPO/tests/e2e" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[5])
from igclient import Client
direct, guarded, pw = Client(sys.argv[1]), Client(sys.argv[2]), sys.argv[3]  # browser-like: gzip, cookie jars
ids = json.load(open(sys.argv[4]))
bob = guarded.request("POST", "/api/v1/auth/login", json_body={"email": "bob@demo.example", "password": pw, "remember_me": False}).json()["token"]
path = f"/api/v1/images/i/{ids['image_name']}/full"
a = direct.request("GET", path, bob)
b = guarded.request("GET", path, bob)
print(f"  GET {path} with Bob's token")
print(f"    InvokeAI alone : {a.status} {a.header('content-type') or ''} ({len(a.body)} bytes of Alice's picture)" if a.status == 200 else f"    InvokeAI alone : {a.status} {a.detail()}")
print(f"    through guard  : {b.status} {b.detail()}")
if b.status == 200:
    sys.exit("demo: the guard let Bob read Alice's private image")
if a.status != 200:
    print("    (this InvokeAI version refuses it too; try: scripts/demo.sh 6.12.0)")
    print("FAIL 0/1 demo: InvokeAI alone did not leak the image")
else:
    print("PASS 1/1 demo: the guard refused what InvokeAI alone leaked")
PY
echo "    guard's log line: $(grep -m1 '"outcome":"deny"' "$STATE/guard.log" | head -c 400)"

cat <<EOF2

== ready
  open      http://127.0.0.1:$GUARD_PORT/        (the guard; InvokeAI itself is on 127.0.0.1:$INVOKE_PORT)
  admin     admin@demo.example / $PASSWORD
  users     alice@demo.example / $PASSWORD   (owns a private board with one image)
            bob@demo.example   / $PASSWORD
  explain   $GUARD explain GET /api/v1/images/i/$(python3 -c "import json;print(json.load(open('$STATE/demo.json'))['image_name'])") --as bob@demo.example --db $ROOT/databases/invokeai.db --config /dev/null
  metrics   curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep authz_decisions
  logs      $STATE/guard.log, $ROOT/server.log
EOF2
if [[ "${DEMO_KEEP:-1}" == 0 ]]; then exit 0; fi
echo "Ctrl-C stops InvokeAI and the guard."
wait "$GUARD_PID"
