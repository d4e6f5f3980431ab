#!/usr/bin/env python3
"""Seed a FRESH multiuser InvokeAI for the browser test, talking to it directly (never through the guard).

    python setup.py --base http://127.0.0.1:UPORT --out manifest.json

Creates admin (POST /api/v1/auth/setup), alice (non-admin, the browser user) and bob (non-admin).
alice gets two uploaded images (one uncategorized, one on her board "Alice Board"); bob gets two
uploaded images, one on his private board "Bob Private Board" and one uncategorized. Writes a JSON
manifest with the credentials and every id/name, which flow.mjs reads (bob's names are what must
never reach alice).
Standard library only (plus tests/e2e/igclient.py); run it with the InvokeAI venv's python.
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
    "bob": ("bob@example.com", "Bob", "BobPass1234", False),
}


class SetupError(RuntimeError):
    pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--version")
    a = ap.parse_args()
    c = Client(a.base)
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
        raise SetupError(f"expected a fresh multiuser server, got /auth/status {st}")

    m: dict = {"invokeai_version": ver, "users": {}, "boards": {}, "images": {}}

    def login(role):
        email, _, pw, _ = USERS[role]
        tokens[role] = j("POST", "/api/v1/auth/login",
                         json_body={"email": email, "password": pw, "remember_me": False})["token"]

    email, name, pw, _ = USERS["admin"]
    res = j("POST", "/api/v1/auth/setup", json_body={"email": email, "display_name": name, "password": pw})
    m["users"]["admin"] = {"user_id": res["user"]["user_id"], "email": email, "password": pw, "is_admin": True}
    login("admin")
    for role in ("alice", "bob"):
        email, name, pw, is_admin = USERS[role]
        u = j("POST", "/api/v1/auth/users", "admin",
              json_body={"email": email, "display_name": name, "password": pw, "is_admin": is_admin})
        m["users"][role] = {"user_id": u["user_id"], "email": email, "password": pw, "is_admin": is_admin,
                            "display_name": name}
        login(role)

    def board(key, who, name):
        b = j("POST", "/api/v1/boards/", who, params={"board_name": name})
        m["boards"][key] = {"board_id": b["board_id"], "board_name": name, "owner": who}
        return b["board_id"]

    n = 0

    def upload(key, who, board_key=None):
        nonlocal n
        n += 1
        params = {"image_category": "general", "is_intermediate": "false"}
        if board_key:
            params["board_id"] = m["boards"][board_key]["board_id"]
        colour = ((70 * n + 30) % 256, (130 * n + 60) % 256, (200 * n + 90) % 256)
        img = j("POST", "/api/v1/images/upload", who, params=params,
                files=[("file", f"{key}.png", png(64, 64, colour), "image/png")])
        m["images"][key] = {"image_name": img["image_name"], "owner": who, "board": board_key}

    board("alice_board", "alice", "Alice Board")
    upload("alice_uncategorized", "alice")
    upload("alice_on_board", "alice", "alice_board")
    board("bob_board", "bob", "Bob Private Board")
    upload("bob_on_board", "bob", "bob_board")
    upload("bob_uncategorized", "bob")

    Path(a.out).write_text(json.dumps(m, indent=2))
    print(f"seeded InvokeAI {ver}: users {', '.join(m['users'])}; "
          f"{len(m['boards'])} boards; {len(m['images'])} images", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"setup.py: ERROR: {e}", file=sys.stderr)
        sys.exit(2)
