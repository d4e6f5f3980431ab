#!/usr/bin/env python3
"""Build the cross-user end-to-end scenario on a FRESH multiuser InvokeAI, through its public API.

    python3 tests/e2e/scenario.py --base http://127.0.0.1:PORT --db ROOT/databases/invokeai.db --out manifest.json

Talks to InvokeAI directly (never through the guard), with the standard library only. Writes a JSON
manifest of every id (users + tokens, boards, images, workflows, queue items, style presets, system
prompts) that tests/e2e/matrix.py reads. `--db` is only read (mode=ro) for the JWT secret, which the
matrix needs to forge tokens (system user, tampered claims, expired tokens).

Scenario (role names are manifest keys):
  users     admin (POST /auth/setup), alice, bob, carol (non-admins), dave (deactivated at the end),
            erin (created admin, creates content, demoted at the end). Pre-change tokens of dave and
            erin are kept as tokens.dave_before_deactivation / tokens.erin_before_demotion.
  boards    alice_private, alice_shared, alice_public (visibility where the version has it; 6.12.0
            has no visibility, its PATCH is refused and the board stays private), bob_private,
            bob_public_disposable (bob deletes it with include_images in the matrix), admin_board,
            carol_archived, dave_board, erin_board.
  images    two per alice board, uncategorized per user, alice_intermediate, bob_on_alice_public
            (bob moves his own image there), carol_on_alice_public (carol uploads into it),
            erin_on_bob_private (erin, while admin), carol_on_bob_public_disposable, plus disposable
            "victim" images for the matrix's mutating cases (see VICTIMS).
  workflows wf_alice_private (with a thumbnail), wf_alice_shared, wf_bob_private, wf_dave_private,
            one shipped default.
  queue     model-free `add` graphs: alice (2-run batch), bob, carol, dave, erin; bob's item canceled.
  presets   one per user (alice's public where the API knows is_public), admin's type=default.
  system prompts (6.14+) alice public, bob private.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from igclient import Client, png  # noqa: E402

QUEUE = "default"
USERS = [
    ("admin", "admin@example.com", "Admin", "AdminPass123", True),
    ("alice", "alice@example.com", "Alice", "AlicePass123", False),
    ("bob", "bob@example.com", "Bob", "BobPass1234", False),
    ("carol", "carol@example.com", "Carol", "CarolPass123", False),
    ("dave", "dave@example.com", "Dave", "DavePass1234", False),
    ("erin", "erin@example.com", "Erin", "ErinPass1234", True),
]
TERMINAL = ("completed", "failed", "canceled")


class ScenarioError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[scenario {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Scenario:
    def __init__(self, base: str, version: str | None):
        # Gzip like a browser, but no shared cookie jar: this driver acts as six users by Bearer token, and one
        # jar would send the last login's media cookie (6.14+) along with every other user's requests.
        self.c = Client(base, cookie_jar=False)
        self.version = version
        self.tokens: dict[str, str] = {}
        self.m: dict = {"users": {}, "boards": {}, "images": {}, "workflows": {}, "queue_items": {},
                        "style_presets": {}, "system_prompts": {}, "client_state": {}, "features": {},
                        "tokens": self.tokens, "notes": []}
        self.n = 0

    # ------------------------------------------------------------------ helpers
    def call(self, method, path, who=None, expect=(200,), **kw):
        tok = self.tokens[who] if who else None
        r = self.c.request(method, path, tok, **kw)
        if expect is not None and r.status not in expect:
            raise ScenarioError(f"{method} {path} as {who} -> {r.status} {r.text[:400]}")
        return r

    def j(self, method, path, who=None, expect=(200,), **kw):
        return self.call(method, path, who, expect, **kw).json()

    def uid(self, role):
        return self.m["users"][role]["user_id"]

    # ------------------------------------------------------------------ users
    def login(self, role, key=None):
        u = self.m["users"][role]
        res = self.j("POST", "/api/v1/auth/login", json_body={"email": u["email"], "password": u["password"],
                                                              "remember_me": False})
        self.tokens[key or role] = res["token"]
        return res["token"]

    def users(self):
        st = self.j("GET", "/api/v1/auth/status")
        if not st.get("multiuser_enabled") or not st.get("setup_required"):
            raise ScenarioError(f"expected a fresh multiuser server, got /auth/status {st}")
        role, email, name, pw, _ = USERS[0]
        res = self.j("POST", "/api/v1/auth/setup", json_body={"email": email, "display_name": name, "password": pw})
        self._user(role, res["user"], pw)
        self.login(role)
        for role, email, name, pw, is_admin in USERS[1:]:
            u = self.j("POST", "/api/v1/auth/users", "admin", expect=(200, 201),
                       json_body={"email": email, "display_name": name, "password": pw, "is_admin": is_admin})
            self._user(role, u, pw)
            self.login(role)

    def _user(self, role, dto, pw):
        self.m["users"][role] = {"user_id": dto["user_id"], "email": dto["email"], "display_name": dto["display_name"],
                                 "password": pw, "is_admin": dto["is_admin"], "is_active": dto["is_active"]}

    # ------------------------------------------------------------------ boards
    def board(self, role, owner, name, visibility="private"):
        b = self.j("POST", "/api/v1/boards/", owner, expect=(200, 201), params={"board_name": name})
        bid = b["board_id"]
        has_vis = "board_visibility" in b
        self.m["features"].setdefault("board_visibility", has_vis)
        if visibility != "private" and has_vis:
            b = self.j("PATCH", f"/api/v1/boards/{bid}", owner, expect=(200, 201),
                       json_body={"board_visibility": visibility})
            assert b["board_visibility"] == visibility, b
        self.m["boards"][role] = {"board_id": bid, "board_name": name, "owner": owner, "user_id": b["user_id"],
                                  "requested_visibility": visibility,
                                  "visibility": b.get("board_visibility", "private"), "archived": False}

    def archive(self, role):
        b = self.m["boards"][role]
        res = self.j("PATCH", f"/api/v1/boards/{b['board_id']}", b["owner"], expect=(200, 201),
                     json_body={"archived": True})
        assert res["archived"] is True, res
        b["archived"] = True

    # ------------------------------------------------------------------ images
    def upload(self, role, uploader, board=None, intermediate=False):
        self.n += 1
        i = self.n
        params = {"image_category": "user", "is_intermediate": "true" if intermediate else "false"}
        if board:
            params["board_id"] = self.m["boards"][board]["board_id"]
        data = png(8 + i % 5, 8 + i % 3, ((53 * i + 17) % 256, (97 * i + 101) % 256, (151 * i + 203) % 256))
        img = self.j("POST", "/api/v1/images/upload", uploader, expect=(200, 201), params=params,
                     files=[("file", f"{role}.png", data, "image/png")])
        if (img.get("board_id") or None) != (params.get("board_id") or None):
            raise ScenarioError(f"upload {role}: board_id {img.get('board_id')} != {params.get('board_id')}")
        self.m["images"][role] = {"image_name": img["image_name"], "owner": uploader, "user_id": self.uid(uploader),
                                  "board": board, "is_intermediate": bool(img["is_intermediate"]),
                                  "starred": bool(img["starred"])}
        return img["image_name"]

    def move(self, role, by, board):
        img = self.m["images"][role]
        bid = self.m["boards"][board]["board_id"]
        res = self.j("POST", "/api/v1/board_images/", by, expect=(200, 201),
                     json_body={"board_id": bid, "image_name": img["image_name"]})
        assert img["image_name"] in res.get("added_images", [img["image_name"]]), res
        img["board"] = board

    # ------------------------------------------------------------------ queue
    @staticmethod
    def g_add(key, a, b):
        return {"id": f"e2e-{key}", "edges": [], "nodes": {
            "add1": {"id": "add1", "type": "add", "a": a, "b": b, "is_intermediate": True, "use_cache": False}}}

    def enqueue(self, roles, owner, graph):
        res = self.j("POST", f"/api/v1/queue/{QUEUE}/enqueue_batch", owner, expect=(200, 201),
                     json_body={"batch": {"graph": graph, "runs": len(roles)}, "prepend": False})
        ids = sorted(res["item_ids"])
        if len(ids) != len(roles):
            raise ScenarioError(f"enqueue {roles}: got item ids {ids}")
        for role, item_id in zip(roles, ids):
            self.m["queue_items"][role] = {"item_id": item_id, "owner": owner, "user_id": self.uid(owner),
                                           "batch_id": res["batch"]["batch_id"], "status": "pending"}
        return ids

    def wait(self, role, timeout=120.0):
        q = self.m["queue_items"][role]
        deadline = time.time() + timeout
        while True:
            item = self.j("GET", f"/api/v1/queue/{QUEUE}/i/{q['item_id']}", q["owner"])
            if item["status"] in TERMINAL:
                q["status"], q["session_id"] = item["status"], item.get("session_id")
                return item
            if time.time() > deadline:
                raise ScenarioError(f"queue item {q['item_id']} ({role}) still {item['status']} after {timeout}s")
            time.sleep(0.2)

    # ------------------------------------------------------------------ workflows
    def workflow(self, role, owner, share=False):
        wf = {"name": role, "author": owner, "description": f"e2e workflow {role}", "version": "1.0.0",
              "contact": "", "tags": "e2e", "notes": "", "exposedFields": [],
              "meta": {"version": "3.0.0", "category": "user"}, "nodes": [], "edges": [], "form": None}
        res = self.j("POST", "/api/v1/workflows/", owner, json_body={"workflow": wf})
        wid = res["workflow_id"]
        has_owner = "user_id" in res
        self.m["features"].setdefault("workflow_ownership", has_owner)
        entry = {"workflow_id": wid, "name": role, "owner": owner, "is_public": bool(res.get("is_public", False)),
                 "category": "user", "thumbnail": False}
        if share and has_owner:
            res = self.j("PATCH", f"/api/v1/workflows/i/{wid}/is_public", owner, json_body={"is_public": True})
            entry["is_public"] = bool(res["is_public"])
        self.m["workflows"][role] = entry

    def workflow_thumbnail(self, role):
        w = self.m["workflows"][role]
        self.call("PUT", f"/api/v1/workflows/i/{w['workflow_id']}/thumbnail", w["owner"],
                  files=[("image", "thumb.png", png(16, 16, (10, 200, 90)), "image/png")])
        w["thumbnail"] = True

    def default_workflow(self):
        res = self.j("GET", "/api/v1/workflows/", "admin",
                     params={"page": 0, "per_page": 1, "categories": "default", "order_by": "name", "direction": "ASC"})
        if res["items"]:
            it = res["items"][0]
            self.m["workflows"]["wf_default"] = {"workflow_id": it["workflow_id"], "name": it["name"], "owner": None,
                                                 "is_public": True, "category": "default", "thumbnail": False}

    # ------------------------------------------------------------------ presets / prompts / client state
    def preset(self, role, owner, public=False, ptype="user"):
        data = {"name": role, "positive_prompt": f"{{prompt}}, by {owner}", "negative_prompt": "blurry", "type": ptype}
        if public:
            data["is_public"] = True
        res = self.j("POST", "/api/v1/style_presets/", owner, files=[("data", json.dumps(data))])
        self.m["style_presets"][role] = {"id": res["id"], "name": res["name"], "type": res["type"], "owner": owner,
                                         "created_by": owner, "user_id": res.get("user_id"),
                                         "is_public": bool(res.get("is_public") or False)}

    def default_preset(self):
        res = self.j("GET", "/api/v1/style_presets/", "admin")
        shipped = sorted((p for p in res if p["type"] == "default" and p["name"] != "sp_admin_default"),
                         key=lambda p: p["name"])
        if shipped:
            p = shipped[0]
            self.m["style_presets"]["sp_default"] = {"id": p["id"], "name": p["name"], "type": "default",
                                                     "owner": "system", "created_by": None,
                                                     "user_id": p.get("user_id"), "is_public": bool(p.get("is_public"))}

    def client_state(self, owner):
        value = json.dumps({"owner": owner})
        self.j("POST", f"/api/v1/client_state/{QUEUE}/set_by_key", owner, params={"key": "e2e_note"}, json_body=value)
        self.m["client_state"][owner] = {"key": "e2e_note", "value": value}

    def system_prompt(self, role, owner, public):
        res = self.j("POST", "/api/v1/system_prompts/", owner,
                     json_body={"name": role, "content": f"You are {owner}'s e2e assistant."})
        if public:
            res = self.j("PATCH", f"/api/v1/system_prompts/i/{res['id']}", owner, json_body={"is_public": True})
        self.m["system_prompts"][role] = {"id": res["id"], "owner": owner, "is_public": bool(res["is_public"])}

    # ------------------------------------------------------------------ the whole scenario
    def build(self, db: Path | None):
        ver = self.j("GET", "/api/v1/app/version")["version"]
        if self.version and ver != self.version:
            raise ScenarioError(f"server reports version {ver}, expected {self.version}")
        self.version = ver
        self.m["invokeai_version"] = ver
        log(f"InvokeAI {ver}; users")
        self.users()

        log("boards")
        self.board("alice_private", "alice", "Alice Private")
        self.board("alice_shared", "alice", "Alice Shared", "shared")
        self.board("alice_public", "alice", "Alice Public", "public")
        self.board("bob_private", "bob", "Bob Private")
        self.board("bob_public_disposable", "bob", "Bob Public Disposable", "public")
        self.board("admin_board", "admin", "Admin Board")
        self.board("carol_archived", "carol", "Carol Archived")
        self.board("dave_board", "dave", "Dave Board")
        self.board("erin_board", "erin", "Erin Board")

        log("images")
        for b in ("alice_private", "alice_shared", "alice_public"):
            self.upload(f"{b}_1", "alice", b)
            self.upload(f"{b}_2", "alice", b)
        self.upload("alice_uncat_1", "alice")
        self.upload("alice_uncat_2", "alice")
        self.upload("alice_intermediate", "alice", intermediate=True)
        self.call("POST", "/api/v1/images/star", "alice",
                  json_body={"image_names": [self.m["images"]["alice_uncat_1"]["image_name"]]})
        self.m["images"]["alice_uncat_1"]["starred"] = True
        self.upload("bob_private_1", "bob", "bob_private")
        self.upload("bob_private_2", "bob", "bob_private")
        self.upload("bob_uncat_1", "bob")
        self.upload("bob_uncat_2", "bob")
        self.upload("bob_on_alice_public", "bob")
        self.move("bob_on_alice_public", "bob", "alice_public")
        self.upload("bob_public_disposable_1", "bob", "bob_public_disposable")
        self.upload("admin_board_1", "admin", "admin_board")
        self.upload("admin_uncat_1", "admin")
        self.upload("carol_archived_1", "carol", "carol_archived")
        self.upload("carol_uncat_1", "carol")
        # 6.12.0 checks nothing on upload-into-board, so these contributions exist there too
        # (the target boards are private on 6.12.0).
        self.upload("carol_on_alice_public", "carol", "alice_public")
        self.upload("carol_on_bob_public_disposable", "carol", "bob_public_disposable")
        self.upload("dave_board_1", "dave", "dave_board")
        self.upload("dave_uncat_1", "dave")
        self.upload("erin_board_1", "erin", "erin_board")
        self.upload("erin_uncat_1", "erin")
        self.upload("erin_on_bob_private", "erin", "bob_private")
        # disposable images for the matrix's mutating cases (one case each)
        for role, owner, board in VICTIMS:
            self.upload(role, owner, board)
        self.archive("carol_archived")

        log("workflows")
        self.workflow("wf_alice_private", "alice")
        self.workflow("wf_alice_shared", "alice", share=True)
        self.workflow("wf_bob_private", "bob")
        self.workflow("wf_dave_private", "dave")
        self.workflow_thumbnail("wf_alice_private")
        self.default_workflow()

        log("style presets, client state, system prompts")
        for role, *_ in USERS:
            self.preset(f"sp_{role}", role, public=(role == "alice"))
        self.preset("sp_admin_default", "admin", ptype="default")
        self.default_preset()
        for role, *_ in USERS:
            self.client_state(role)
        r = self.call("GET", "/api/v1/system_prompts/", "alice", expect=None)
        self.m["features"]["system_prompts"] = r.status == 200 and isinstance(r.json(), list)
        if self.m["features"]["system_prompts"]:
            self.system_prompt("sysprompt_alice_public", "alice", True)
            self.system_prompt("sysprompt_bob_private", "bob", False)

        log("queue")
        self.enqueue(["q_alice_add_1", "q_alice_add_2"], "alice", self.g_add("q_alice_add", 2, 3))
        for k, (who, a, b) in {"q_bob_add": ("bob", 4, 5), "q_carol_add": ("carol", 6, 7),
                               "q_dave_add": ("dave", 8, 9), "q_erin_add": ("erin", 10, 11)}.items():
            self.enqueue([k], who, self.g_add(k, a, b))
        for k in list(self.m["queue_items"]):
            if self.wait(k)["status"] != "completed":
                raise ScenarioError(f"queue item {k} did not complete")
        self.call("PUT", f"/api/v1/queue/{QUEUE}/processor/pause", "admin")
        (cid,) = self.enqueue(["q_bob_canceled"], "bob", self.g_add("q_bob_canceled", 1, 1))
        self.call("PUT", f"/api/v1/queue/{QUEUE}/i/{cid}/cancel", "bob")
        self.wait("q_bob_canceled")
        self.call("PUT", f"/api/v1/queue/{QUEUE}/processor/resume", "admin")

        log("deactivate dave, demote erin (keeping their earlier tokens)")
        self.tokens["dave_before_deactivation"] = self.tokens["dave"]
        self.tokens["erin_before_demotion"] = self.tokens["erin"]
        u = self.j("PATCH", f"/api/v1/auth/users/{self.uid('dave')}", "admin", json_body={"is_active": False})
        assert u["is_active"] is False, u
        self.m["users"]["dave"]["is_active"] = False
        u = self.j("PATCH", f"/api/v1/auth/users/{self.uid('erin')}", "admin", json_body={"is_admin": False})
        assert u["is_admin"] is False, u
        self.m["users"]["erin"].update(is_admin=False, was_admin=True)
        del self.tokens["dave"]
        self.login("erin")
        self.tokens["erin_after_demotion"] = self.tokens["erin"]

        if db is not None:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                (secret,) = con.execute("SELECT value FROM app_settings WHERE key='jwt_secret'").fetchone()
                cols = {r[1] for r in con.execute("PRAGMA table_info(users)")}
                self.m["features"]["token_epoch"] = "token_epoch" in cols
            finally:
                con.close()
            self.m["jwt_secret"] = secret
        self.m["features"]["download_queue"] = self.call("GET", "/api/v1/download_queue/", "admin",
                                                         expect=None).status == 200
        self.m["api_calls"] = self.c.calls
        log(f"done ({self.c.calls} API calls)")
        return self.m


# (role, owner, board) of images that exist only to be mutated by one matrix case each
VICTIMS = [
    ("victim_alice_shared_del", "alice", "alice_shared"),      # bob DELETE /images/i -> 403
    ("victim_alice_shared_move", "alice", "alice_shared"),     # bob POST /board_images/ -> 403
    ("victim_alice_shared_unlink", "alice", "alice_shared"),   # bob DELETE /board_images/ -> 403
    ("victim_alice_shared_batch_unlink", "alice", "alice_shared"),  # bob POST /board_images/batch/delete
    ("victim_alice_private_del", "alice", "alice_private"),    # bob DELETE -> 403
    ("victim_alice_private_batchdel", "alice", "alice_private"),  # bob POST /images/delete -> no effect
    ("victim_alice_private_patch", "alice", "alice_private"),  # bob PATCH -> 403
    ("victim_alice_uncat_del", "alice", None),                 # bob DELETE -> 403
    ("victim_alice_public_del", "alice", "alice_public"),      # bob DELETE: public board -> allowed (main)
    ("victim_alice_private_admin_del", "alice", "alice_private"),  # admin DELETE -> 200
    ("victim_alice_own_del", "alice", "alice_private"),        # alice DELETE own -> 200
    ("victim_alice_own_unlink", "alice", "alice_private"),     # alice DELETE /board_images/ own -> 200
    ("victim_carol_on_alice_public_del", "carol", "alice_public"),  # alice (board owner) DELETE -> 200
    ("victim_bob_batchdel", "bob", None),                      # bob POST /images/delete own -> 200
    ("victim_bob_to_alice_public", "bob", None),               # bob POST /board_images/ onto alice_public
    ("victim_bob_to_alice_shared", "bob", None),               # bob POST /board_images/ onto alice_shared -> 403
    ("victim_bob_to_alice_private", "bob", None),              # bob POST /board_images/ onto alice_private -> 403
    ("victim_bob_batch_to_alice_shared", "bob", None),         # bob POST /board_images/batch -> 403
    ("victim_alice_for_bob_board", "alice", None),             # bob pulls alice's image onto his board -> 403
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="InvokeAI base URL (direct, not the guard)")
    ap.add_argument("--out", required=True, help="manifest JSON to write")
    ap.add_argument("--db", help="ROOT/databases/invokeai.db (read-only; for the JWT secret)")
    ap.add_argument("--version", help="expected InvokeAI version (checked against /api/v1/app/version)")
    a = ap.parse_args()
    t0 = time.time()
    try:
        m = Scenario(a.base, a.version).build(Path(a.db) if a.db else None)
    except ScenarioError as e:
        log(f"FAILED: {e}")
        return 1
    m["build_seconds"] = round(time.time() - t0, 1)
    Path(a.out).write_text(json.dumps(m, indent=1, sort_keys=True))
    log(f"manifest {a.out} ({m['build_seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
