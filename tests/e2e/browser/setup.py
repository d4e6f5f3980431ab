#!/usr/bin/env python3
"""Seed a FRESH multiuser InvokeAI for the browser test, talking to it directly (never through the guard).

    python setup.py --base http://127.0.0.1:UPORT --out manifest.json [--version 6.14.2]

Users (role names are manifest keys):
  admin   POST /api/v1/auth/setup
  alice   non-admin: the user the browser logs in as THROUGH THE GUARD
  carol   non-admin twin of alice (same kind of data): the user of the baseline run straight against InvokeAI,
          so the guard run can be compared with what the unguarded server does for the same flow
  bob     non-admin whose data must never reach alice
Each of alice, carol and bob gets a private board "<Name> Board" (bob's: "Bob Private Board") with one image on it,
uncategorized images (category "general", so the gallery's Images tab shows them) and a private workflow
("<Name> Workflow"; bob's: "Bob Secret Workflow").

Writes a JSON manifest with the credentials and every id/name; flow.mjs reads it (bob's ids and names are what
must never appear in alice's responses). Standard library only, plus tests/e2e/igclient.py; run it with the
InvokeAI venv's python.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from igclient import Client, png  # noqa: E402

USERS = {
    "admin": ("admin@example.com", "Admin", "AdminPass123", True),
    "alice": ("alice@example.com", "Alice", "AlicePass123", False),
    "carol": ("carol@example.com", "Carol", "CarolPass123", False),
    "bob": ("bob@example.com", "Bob", "BobPass1234", False),
}
# (role, board name, workflow name, uncategorized images)
CONTENT = [
    ("alice", "Alice Board", "Alice Workflow", 3),
    ("carol", "Carol Board", "Carol Workflow", 3),
    ("bob", "Bob Private Board", "Bob Secret Workflow", 2),
]


class SetupError(RuntimeError):
    pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--version")
    a = ap.parse_args()
    # Gzip like a browser; no cookie jar: it seeds four users by Bearer token (one jar would mix their cookies).
    c = Client(a.base, cookie_jar=False)
    tokens: dict[str, str] = {}

    def j(method, path, who=None, expect=(200, 201), **kw):
        r = c.request(method, path, tokens.get(who) if who else None, **kw)
        if r.status not in expect:
            raise SetupError(f"{method} {path} as {who} -> {r.status} {r.text[:300]}")
        return r.json()

    ver = j("GET", "/api/v1/app/version")["version"]
    if a.version and ver != a.version:
        raise SetupError(f"server reports InvokeAI {ver}, expected {a.version}")
    st = j("GET", "/api/v1/auth/status")
    if not st.get("multiuser_enabled") or not st.get("setup_required"):
        raise SetupError(f"expected a fresh multiuser server, got /api/v1/auth/status {st}")

    m: dict = {"invokeai_version": ver, "users": {}, "boards": {}, "images": {}, "workflows": {}}

    def login(role):
        email, _, pw, _ = USERS[role]
        tokens[role] = j("POST", "/api/v1/auth/login",
                         json_body={"email": email, "password": pw, "remember_me": False})["token"]

    email, name, pw, _ = USERS["admin"]
    res = j("POST", "/api/v1/auth/setup", json_body={"email": email, "display_name": name, "password": pw})
    m["users"]["admin"] = {"user_id": res["user"]["user_id"], "email": email, "password": pw, "is_admin": True,
                           "display_name": name}
    login("admin")
    for role in ("alice", "carol", "bob"):
        email, name, pw, is_admin = USERS[role]
        u = j("POST", "/api/v1/auth/users", "admin",
              json_body={"email": email, "display_name": name, "password": pw, "is_admin": is_admin})
        m["users"][role] = {"user_id": u["user_id"], "email": email, "password": pw, "is_admin": is_admin,
                            "display_name": name}
        login(role)

    n = 0

    def upload(key, who, board_key=None):
        nonlocal n
        n += 1
        params = {"image_category": "general", "is_intermediate": "false"}
        if board_key:
            params["board_id"] = m["boards"][board_key]["board_id"]
        colour = ((67 * n + 40) % 256, (131 * n + 90) % 256, (197 * n + 150) % 256)
        img = j("POST", "/api/v1/images/upload", who, params=params,
                files=[("file", f"{key}.png", png(96, 96, colour), "image/png")])
        m["images"][key] = {"image_name": img["image_name"], "owner": who, "board": board_key}

    def workflow(key, who, name):
        wf = {"name": name, "author": who, "description": f"browser e2e workflow of {who}", "version": "1.0.0",
              "contact": "", "tags": "e2e", "notes": "", "exposedFields": [],
              "meta": {"version": "3.0.0", "category": "user"}, "nodes": [], "edges": [], "form": None}
        res = j("POST", "/api/v1/workflows/", who, json_body={"workflow": wf})
        m["workflows"][key] = {"workflow_id": res["workflow_id"], "name": name, "owner": who,
                               "is_public": bool(res.get("is_public", False))}

    for role, board_name, wf_name, n_uncat in CONTENT:
        b = j("POST", "/api/v1/boards/", role, params={"board_name": board_name})
        m["boards"][f"{role}_board"] = {"board_id": b["board_id"], "board_name": board_name, "owner": role}
        upload(f"{role}_on_board", role, f"{role}_board")
        for i in range(n_uncat):
            upload(f"{role}_uncategorized_{i}", role)
        workflow(f"{role}_workflow", role, wf_name)
        if m["workflows"][f"{role}_workflow"]["is_public"]:
            raise SetupError(f"{role}'s new workflow is public; expected private workflows in multiuser mode")

    Path(a.out).write_text(json.dumps(m, indent=2))
    print(f"seeded InvokeAI {ver}: users {', '.join(m['users'])}; {len(m['boards'])} boards; "
          f"{len(m['images'])} images; {len(m['workflows'])} workflows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"setup.py: ERROR: {e}", file=sys.stderr)
        sys.exit(2)
