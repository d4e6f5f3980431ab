#!/usr/bin/env python3
"""Cross-user authorization matrix, run THROUGH the guard (or, with --direct, against InvokeAI itself).

    python3 tests/e2e/matrix.py --manifest M.json --base http://127.0.0.1:GUARD_PORT
    python3 tests/e2e/matrix.py --manifest M.json --base http://127.0.0.1:INVOKEAI_PORT --direct

The manifest comes from scenario.py (built directly on InvokeAI). Every case is one behaviour with an
expected status and, for listings, the expected set of visible items. Expectations are InvokeAI
**main**'s behaviour (docs: spec §0-§1, the PR #9018 QA steps and review findings), computed from the
manifest with main's predicates (R_IMG, W_IMG, R_BOARD, W_BOARD, ...). Where main's behaviour needs a
feature the version lacks (6.12.0 has no shared/public boards, no workflow sharing) the manifest's
effective state is used, i.e. 6.12.0's upstream result.

Outcome of a case:
  pass          status (and visible set / follow-up check) as expected
  LEAK          a deny was expected but the call succeeded, or foreign items / data were visible
  FALSE_DENY    an allow was expected (owner/admin/permitted user) but the call was refused, or
                expected items were missing
  FAIL          anything else (wrong error status, 5xx, malformed response)
  XFAIL/XPASS   cases needing a capability the guard does not have yet (response rewriting of
                list bodies, spec §4 R1-R9). Not counted in N. No Socket.IO case is xfail: the guard
                terminates and filters Socket.IO (tests/e2e/sockets.py has the full socket suite).

Last line per run:  PASS n/N leaks=L false_denies=F (InvokeAI V matrix)   (xfail/xpass counts on the line before;
the version keeps the lines of several versions distinct for scripts/test.sh's count).
Exit status 0 only if every non-xfail case passed.

Clients: every request is browser-like (igclient: `Accept-Encoding: gzip, deflate, br`, bodies decoded, the
Content-Encoding seen is kept per case in the report). Cases that simulate the browser's login -> cookie ->
<img src> flow use a per-user client with a cookie jar (Case.client); every other case, and every "no
credentials" case, goes through the shared stateless client (no cookies unless the case passes them).
--upstream (InvokeAI itself; run.sh passes it) is used for follow-up checks that must not depend on the guard.
"""
from __future__ import annotations

import argparse
import fnmatch
import http.cookiejar
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from igclient import (Client, Response, ambiguous_multipart, cookies_from, jwt_claims, jwt_hs256,  # noqa: E402
                      png)

SESSION_COOKIE = "invoke_guard_session"   # the guard's session cookie (src/identity.rs)
GZIP_MIN = 1000                            # InvokeAI's GZipMiddleware(minimum_size=1000): bodies must exceed it

Q = "default"
DENY = (401, 403, 404)

STRICTER_612 = ("6.12 deletes every user's images here; main's narrower deletion cannot be had by allowing or "
                "denying the request, so on 6.12 a refusal (stricter than main) is accepted; data loss is a leak")


# ============================================================================ case model
@dataclass
class Case:
    name: str
    who: str | None                   # token key in manifest.tokens (or ctx.tokens); None = anonymous
    method: str
    path: str | Callable[[], str]
    expect: tuple                      # acceptable statuses
    params: dict | Callable | None = None
    body: object = None                # JSON body (or callable returning it)
    files: list | Callable | None = None
    headers: dict | None = None
    cookies: dict | Callable | None = None
    token: str | Callable | None = None  # explicit token (overrides who)
    check: Callable | None = None      # check(resp) -> None | (kind, message)  kind in leak/false_deny/fail
    after: Callable | None = None      # after(resp) -> None | (kind, message)  follow-up (e.g. victim survives)
    xfail: str | None = None
    note: str = ""
    pre_sleep: float = 0.0             # seconds to wait before the call (token timestamps)
    client: str | None = None          # name of a browser-like client with a cookie jar (Ctx.browser)
    data: bytes | Callable | None = None  # raw request body (with content_type), instead of body/files
    content_type: str | None = None
    skip_if: Callable | None = None    # skip_if() -> None | reason: decided at run time, printed, not counted
    # filled in
    outcome: str = ""
    status: int = 0
    message: str = ""
    seconds: float = 0.0
    content_encoding: str = ""         # Content-Encoding of the response as received ("" = none)


@dataclass
class Ctx:
    m: dict
    c: Client                          # shared, stateless (no cookie jar): Bearer and "no credentials" cases
    direct: bool
    tokens: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    up: Client | None = None           # InvokeAI itself (follow-up checks); == base with --direct
    browsers: dict = field(default_factory=dict)

    def browser(self, name: str) -> Client:
        """A browser-like client with its own cookie jar, one per name (kept for the whole run)."""
        if name not in self.browsers:
            self.browsers[name] = Client(self.c.base, timeout=self.c.timeout, cookie_jar=True)
        return self.browsers[name]


def is_deny_expected(expect: tuple) -> bool:
    return all(s >= 400 for s in expect)


# ============================================================================ the matrix
class Matrix:
    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.m = ctx.m
        self.cases: list[Case] = []
        f = self.m["features"]
        self.vis = bool(f.get("board_visibility"))
        self.wf_owner = bool(f.get("workflow_ownership"))
        self.sysprompts = bool(f.get("system_prompts"))
        self.download_queue = bool(f.get("download_queue"))
        self.version = self.m["invokeai_version"]
        self.v612 = self.version.startswith("6.12.")
        # 6.13.x: board visibility, workflow owners/is_public and per-user lists upstream (the features above), but
        # unscoped image lists without board_id (R1/R2), by_date covers of other users (R4), unscoped board cascade
        self.v613 = self.version.startswith("6.13.")
        self.notes: list[str] = []  # printed before the run (e.g. why a case was not added)

    # ------------------------------------------------------------------ manifest helpers
    def uid(self, role):
        return self.m["users"][role]["user_id"]

    def admin(self, role):
        u = self.m["users"].get(role)
        return bool(u and u["is_admin"] and u["is_active"])

    def img(self, role):
        return self.m["images"][role]["image_name"]

    def board(self, role):
        return self.m["boards"][role]["board_id"]

    def vis_of(self, board_role):
        return self.m["boards"][board_role]["visibility"] if board_role else None

    def r_img(self, who, role):
        i = self.m["images"][role]
        return self.admin(who) or i["owner"] == who or self.vis_of(i["board"]) in ("shared", "public")

    def w_img(self, who, role):
        i = self.m["images"][role]
        b = self.m["boards"].get(i["board"]) if i["board"] else None
        return (self.admin(who) or i["owner"] == who
                or (b is not None and (b["owner"] == who or b["visibility"] == "public")))

    def r_board(self, who, brole):
        b = self.m["boards"][brole]
        return self.admin(who) or b["owner"] == who or b["visibility"] in ("shared", "public")

    def w_board(self, who, brole):
        b = self.m["boards"][brole]
        return self.admin(who) or b["owner"] == who or b["visibility"] == "public"

    def known_images(self):
        return {i["image_name"]: role for role, i in self.m["images"].items()}

    def images_where(self, pred):
        return {i["image_name"] for role, i in self.m["images"].items() if pred(role, i)}

    @staticmethod
    def st(ok: bool, allow=200, deny=403):
        return (allow,) if ok else (deny,)

    # ------------------------------------------------------------------ checks
    def own_page_check(self, who, offset, limit):
        """A page of `GET /images/` without board_id is main's: the caller's own images in the upstream's own
        order (InvokeAI's unfiltered list, read directly as admin, restricted to the caller's images), with
        main's offset/limit/total."""
        def chk(resp):
            j = resp.json() or {}
            cl, tok = self.ctx.up or self.ctx.c, self.ctx.tokens["admin"]
            full = cl.request("GET", "/api/v1/images/", tok, params={"limit": 1000, "offset": 0}).json() or {}
            mine = self.images_where(lambda r, i: i["owner"] == who)
            own = [i["image_name"] for i in full.get("items", []) if i["image_name"] in mine]
            got = [i["image_name"] for i in j.get("items", [])]
            foreign = [n for n in got if n not in own]
            if foreign:
                return "leak", f"foreign images {foreign}"
            if got != own[offset:offset + limit] or j.get("total") != len(own) or j.get("offset") != offset:
                return "fail", f"page {got} total={j.get('total')} != {own[offset:offset + limit]} of {len(own)}"
            return None
        return chk

    def wf_count_check(self, who):
        def chk(resp):
            cl = self.ctx.c
            lst = cl.request("GET", "/api/v1/workflows/", self.ctx.tokens[who],
                             params={"categories": "user", "per_page": 1000, "page": 0}).json() or {}
            n = len(lst.get("items", []))
            got = (resp.json() or {}).get("user")
            return None if got == n else ("leak" if isinstance(got, int) and got > n else "fail",
                                          f"counts_by_category user={got}, own list has {n}")
        return chk

    def set_check(self, extract, expected: set, universe: set):
        """Compare the visible subset of `universe` with `expected`: extra items = leak, missing = false deny."""

        def chk(resp: Response):
            try:
                got = set(extract(resp.json())) & universe
            except Exception as e:  # noqa: BLE001
                return "fail", f"cannot read listing: {e}: {resp.text[:200]}"
            extra, missing = got - expected, expected - got
            if extra:
                return "leak", f"{len(extra)} unexpected item(s) visible: {sorted(extra)[:4]}"
            if missing:
                return "false_deny", f"{len(missing)} expected item(s) missing: {sorted(missing)[:4]}"
            return None
        return chk

    def no_foreign(self, extract, foreign: set):
        def chk(resp: Response):
            if resp.status >= 400:
                return None
            try:
                got = set(extract(resp.json()))
            except Exception as e:  # noqa: BLE001
                return "fail", f"cannot read listing: {e}"
            bad = got & foreign
            return ("leak", f"foreign items visible: {sorted(bad)[:4]}") if bad else None
        return chk

    def image_exists(self, role, who="admin"):
        """Follow-up: the victim image must still exist (checked directly as an admin)."""
        name = self.img(role)

        def after(_resp):
            r = self.ctx.c.request("GET", f"/api/v1/images/i/{name}", self.ctx.tokens[who])
            if r.status == 200:
                return None
            return "leak", f"victim image {role} is gone after the denied call (GET -> {r.status})"
        return after

    def image_starred(self, role, want: bool):
        name = self.img(role)

        def after(_resp):
            r = self.ctx.c.request("GET", f"/api/v1/images/i/{name}", self.ctx.tokens["admin"])
            got = (r.json() or {}).get("starred")
            return None if got is want else ("leak", f"{role} starred={got} after another user's call")
        return after

    def image_on_board(self, role, board_role):
        name = self.img(role)
        want = self.board(board_role) if board_role else None

        def after(_resp):
            r = self.ctx.c.request("GET", f"/api/v1/images/i/{name}", self.ctx.tokens["admin"])
            if r.status != 200:
                return "leak", f"victim image {role} is gone (GET -> {r.status})"
            got = r.json().get("board_id") or None
            if (got if got != "none" else None) != want:
                return "leak", f"victim image {role} moved from board {board_role} to {got}"
            return None
        return after

    # ------------------------------------------------------------------ registration
    def add(self, name, who, method, path, expect, **kw) -> Case:
        if isinstance(expect, int):
            expect = (expect,)
        c = Case(name, who, method, path, tuple(expect), **kw)
        self.cases.append(c)
        return c

    # ================================================================== phase 0: setup through the base
    def setup_cases(self):
        """Resources whose ownership only the base (guard) can learn: created here, through it."""
        ctx = self.ctx
        wf = {"name": "wf_g", "author": "e2e", "description": "", "version": "1.0.0", "contact": "", "tags": "e2e",
              "notes": "", "exposedFields": [], "meta": {"version": "3.0.0", "category": "user"}, "nodes": [],
              "edges": [], "form": None}

        def save_wf(key):
            def after(resp):
                j = resp.json() or {}
                if resp.status == 200 and j.get("workflow_id"):
                    ctx.state[key] = j["workflow_id"]
                    return None
                return "fail", "no workflow_id in response"
            return after

        self.add("setup: alice creates a private workflow", "alice", "POST", "/api/v1/workflows/", 200,
                 body={"workflow": dict(wf, name="wf_g_alice_private", tags="e2e, alice-secret")},
                 after=save_wf("wf_g_alice_private"))
        self.add("setup: alice creates a second workflow (to share)", "alice", "POST", "/api/v1/workflows/", 200,
                 body={"workflow": dict(wf, name="wf_g_alice_shared")}, after=save_wf("wf_g_alice_shared"))
        self.add("setup: bob creates a private workflow", "bob", "POST", "/api/v1/workflows/", 200,
                 body={"workflow": dict(wf, name="wf_g_bob_private")}, after=save_wf("wf_g_bob_private"))
        self.add("setup: alice puts a thumbnail on her private workflow", "alice", "PUT",
                 lambda: f"/api/v1/workflows/i/{ctx.state.get('wf_g_alice_private', 'missing')}/thumbnail", 200,
                 files=[("image", "t.png", png(16, 16, (1, 2, 3)), "image/png")])
        if self.wf_owner:
            self.add("setup: alice shares her second workflow (PATCH is_public)", "alice", "PATCH",
                     lambda: f"/api/v1/workflows/i/{ctx.state.get('wf_g_alice_shared', 'missing')}/is_public", 200,
                     body={"is_public": True})

        def save_preset(key):
            def after(resp):
                j = resp.json() or {}
                if resp.status == 200 and j.get("id"):
                    ctx.state[key] = j["id"]
                    return None
                return "fail", "no id in response"
            return after

        for key, who, extra in (("sp_g_alice_private", "alice", {}), ("sp_g_bob_private", "bob", {})):
            data = {"name": key, "positive_prompt": "{prompt}", "negative_prompt": "", "type": "user", **extra}
            self.add(f"setup: {who} creates a private style preset", who, "POST", "/api/v1/style_presets/", 200,
                     files=[("data", json.dumps(data))], after=save_preset(key))

        def save_dl(resp):
            j = resp.json() or {}
            if resp.status == 202 and j.get("bulk_download_item_name"):
                ctx.state["bulk_alice"] = j["bulk_download_item_name"]
                ctx.state["bulk_alice_t"] = time.time()
                return None
            return "fail", f"no bulk_download_item_name: {resp.text[:200]}"

        self.add("setup: alice requests a bulk download of her own image", "alice", "POST", "/api/v1/images/download",
                 202, body={"image_names": [self.img("alice_uncat_2")]}, after=save_dl)

        # ---- gzip regressions: ownership the guard learns from a response body InvokeAI gzips (the browser-like
        # client accepts gzip; bodies above InvokeAI's 1000-byte threshold come back compressed)
        big = "e2e gzip regression: this text keeps the response above InvokeAI's 1000-byte gzip threshold. " * 30
        self.add("setup: alice creates a private workflow whose response is gzipped (>1 kB)", "alice", "POST",
                 "/api/v1/workflows/", 200, body={"workflow": dict(wf, name="wf_gz_alice", notes=big)},
                 after=save_wf("wf_gz_alice"))
        data = {"name": "sp_gz_alice", "positive_prompt": "{prompt}, " + big, "negative_prompt": "", "type": "user"}
        self.add("setup: alice creates a private style preset whose response is gzipped (>1 kB)", "alice", "POST",
                 "/api/v1/style_presets/", 200, files=[("data", json.dumps(data))], after=save_preset("sp_gz_alice"))

        def save_dl_gz(resp):
            j = resp.json() or {}
            if resp.status in (200, 202) and j.get("bulk_download_item_name"):
                ctx.state["bulk_gz_alice"] = j["bulk_download_item_name"]
                ctx.state["bulk_gz_alice_t"] = time.time()
                return None
            return "fail", f"no bulk_download_item_name: {resp.text[:200]}"
        self.add("setup: alice requests a bulk download with gzip accepted (202/200 with bulk_download_item_name)",
                 "alice", "POST", "/api/v1/images/download", (200, 202),
                 body={"image_names": [self.img(r) for r in ("alice_uncat_1", "alice_private_1", "alice_private_2")]},
                 after=save_dl_gz)

    # ================================================================== phase 1: reads and listings
    def read_cases(self):
        m, ctx = self.m, self.ctx
        known = set(self.known_images())

        def resume_processor(_resp):  # if the pause leaked, undo it so later queue cases still run
            ctx.c.request("PUT", f"/api/v1/queue/{Q}/processor/resume", ctx.tokens["admin"])
            return None

        # ---- public and unauthenticated routes (hole 10/11/14/19-25)
        self.add("anon: GET app/version is public", None, "GET", "/api/v1/app/version", 200)
        self.add("anon: GET auth/status is public", None, "GET", "/api/v1/auth/status", 200)
        for p in ("/api/v1/app/app_deps", "/api/v1/app/patchmatch_status", "/api/v1/app/runtime_config",
                  "/api/v1/app/logging", "/api/v1/app/invocation_cache/status", "/api/v2/models/",
                  "/api/v2/models/missing", "/api/v2/models/i/no-such-key", "/api/v2/models/starter_models",
                  "/api/v2/models/stats", "/api/v2/models/hf_login", "/api/v2/models/install",
                  "/api/v2/models/install/1", "/api/v2/models/sync/orphaned", "/api/v1/images/intermediates",
                  "/api/v1/boards/?all=true", f"/api/v1/queue/{Q}/item_ids", f"/api/v1/queue/{Q}/current",
                  f"/api/v1/queue/{Q}/next", f"/api/v1/queue/{Q}/status",
                  f"/api/v1/queue/{Q}/counts_by_destination?destination=canvas", "/api/v1/workflows/",
                  "/api/v1/style_presets/", "/api/v1/style_presets/export",
                  "/api/v1/model_relationships/i/no-such-key", f"/api/v1/client_state/{Q}/get_by_key?key=e2e_note",
                  f"/api/v1/recall/{Q}", "/api/v1/auth/me", "/api/v1/auth/users"):
            self.add(f"anon: GET {p.split('?')[0]} needs a login", None, "GET", p, 401)
        self.add("anon: GET models get_by_attrs needs a login", None, "GET", "/api/v2/models/get_by_attrs", 401,
                 params={"name": "x", "type": "main", "base": "sd-1"})
        self.add("anon: GET models get_by_hash needs a login", None, "GET", "/api/v2/models/get_by_hash", 401,
                 params={"hash": "blake3:00"})
        self.add("anon: GET models scan_folder needs a login", None, "GET", "/api/v2/models/scan_folder", 401,
                 params={"scan_path": "/etc"})
        self.add("anon: GET models hugging_face needs a login", None, "GET", "/api/v2/models/hugging_face", 401,
                 params={"hugging_face_repo": "x/y"})
        for p, b in ((f"/api/v2/models/install/1/pause", None), (f"/api/v2/models/install/1/resume", None),
                     (f"/api/v2/models/install/1/restart_failed", None),
                     (f"/api/v2/models/install/1/restart_file", "https://example.invalid/x"),
                     ("/api/v1/utilities/dynamicprompts", {"prompt": "a {b|c}", "max_prompts": 2}),
                     ("/api/v1/model_relationships/batch", {"model_keys": []}),
                     ("/api/v1/images/images_by_names", {"image_names": [self.img("alice_private_1")]}),
                     ("/api/v1/images/download", {"image_names": [self.img("alice_private_1")]}),
                     (f"/api/v1/queue/{Q}/enqueue_batch", {"batch": {"graph": g_add(1, 1), "runs": 1}}),
                     ("/api/v1/images/", {"width": 8, "height": 8}), ("/api/v1/app/logging", None)):
            self.add(f"anon: POST {p} needs a login", None, "POST", p, 401, body=b)
        self.add("anon: DELETE models sync/orphaned needs a login", None, "DELETE", "/api/v2/models/sync/orphaned",
                 401, body={"paths": []})
        self.add("anon: PUT invocation_cache/disable needs a login", None, "PUT",
                 "/api/v1/app/invocation_cache/disable", 401)

        # ---- non-admin on admin-only routes (hole 10/11/23, sync models QA step)
        for p, params in (("/api/v1/app/runtime_config", None), ("/api/v1/app/logging", None),
                          ("/api/v1/app/invocation_cache/status", None), ("/api/v2/models/starter_models", None),
                          ("/api/v2/models/stats", None), ("/api/v2/models/hf_login", None),
                          ("/api/v2/models/install", None), ("/api/v2/models/install/1", None),
                          ("/api/v2/models/sync/orphaned", None), ("/api/v1/style_presets/export", None),
                          ("/api/v1/auth/users", None),
                          ("/api/v2/models/scan_folder", {"scan_path": "/etc"}),
                          ("/api/v2/models/hugging_face", {"hugging_face_repo": "x/y"})):
            self.add(f"alice (non-admin): GET {p} is admin-only", "alice", "GET", p, 403, params=params)
        self.add("alice (non-admin): PUT queue processor/pause is admin-only", "alice", "PUT",
                 f"/api/v1/queue/{Q}/processor/pause", 403, after=resume_processor)
        for meth, p, b in (("POST", "/api/v2/models/install/1/pause", None),
                           ("POST", "/api/v2/models/install/1/resume", None),
                           ("POST", "/api/v2/models/install/1/restart_failed", None),
                           ("POST", "/api/v2/models/install/1/restart_file", "https://example.invalid/x"),
                           ("DELETE", "/api/v2/models/sync/orphaned", {"paths": []}),
                           ("POST", "/api/v1/app/logging", None),
                           ("PUT", "/api/v1/app/invocation_cache/disable", None),
                           ("PUT", "/api/v1/app/invocation_cache/enable", None),
                           ("DELETE", "/api/v1/app/invocation_cache", None),
                           ("POST", "/api/v1/model_relationships/", {"model_key_1": "a", "model_key_2": "b"}),
                           ("DELETE", "/api/v1/model_relationships/", {"model_key_1": "a", "model_key_2": "b"}),
                           ("POST", "/api/v1/auth/users", {"email": "x@example.com", "display_name": "x",
                                                           "password": "XPass12345", "is_admin": True})):
            self.add(f"alice (non-admin): {meth} {p} is admin-only", "alice", meth, p, 403, body=b)

        # ---- ordinary authenticated routes stay usable (false-deny guards)
        for p, params in (("/api/v2/models/", None), ("/api/v2/models/missing", None),
                          ("/api/v1/app/app_deps", None), ("/api/v1/app/patchmatch_status", None),
                          ("/api/v1/auth/me", None), ("/api/v1/images/intermediates", None),
                          (f"/api/v1/queue/{Q}/status", None), (f"/api/v1/queue/{Q}/current", None),
                          (f"/api/v1/queue/{Q}/next", None), (f"/api/v1/queue/{Q}/item_ids", None),
                          (f"/api/v1/queue/{Q}/counts_by_destination", {"destination": "canvas"}),
                          ("/api/v1/model_relationships/i/no-such-key", None)):
            self.add(f"alice: GET {p} works for a user", "alice", "GET", p, 200, params=params)
        self.add("alice: POST utilities/dynamicprompts works for a user", "alice", "POST",
                 "/api/v1/utilities/dynamicprompts", 200, body={"prompt": "a {b|c}", "max_prompts": 2})
        self.add("alice: POST model_relationships/batch works for a user", "alice", "POST",
                 "/api/v1/model_relationships/batch", 200, body={"model_keys": []})
        for p in ("/api/v2/models/install", "/api/v2/models/sync/orphaned", "/api/v1/app/runtime_config",
                  "/api/v1/auth/users", "/api/v1/style_presets/export", "/api/v2/models/stats",
                  "/api/v1/app/invocation_cache/status"):
            self.add(f"admin: GET {p} works for the admin", "admin", "GET", p, 200)

        # ---- download_queue is gone in main (hole 12/24)
        for who in ("alice", "admin", None):
            self.add(f"{who or 'anon'}: GET /api/v1/download_queue/ is 404 (removed in main)", who, "GET",
                     "/api/v1/download_queue/", 404)
        self.add("alice: POST /api/v1/download_queue/i/ is 404 (removed in main)", "alice", "POST",
                 "/api/v1/download_queue/i/", (404, 405),
                 body={"source": "http://127.0.0.1:9/x", "dest": "/tmp/invoke-guard-e2e-should-not-exist"})

        # ---- identities: demoted admin, deactivated user, system user, forged claims (holes 6, 8)
        secret = m.get("jwt_secret")
        exp = int(time.time()) + 3600
        self.add("erin (demoted admin, pre-demotion token): GET /auth/users is refused", "erin_before_demotion",
                 "GET", "/api/v1/auth/users", 403)
        self.add("erin (demoted admin, pre-demotion token): GET models/install is refused", "erin_before_demotion",
                 "GET", "/api/v2/models/install", 403)
        self.add("erin (demoted admin, pre-demotion token): cannot read alice's private image",
                 "erin_before_demotion", "GET", f"/api/v1/images/i/{self.img('alice_private_1')}", 403)
        self.add("erin (demoted admin, pre-demotion token): cannot pause the queue processor",
                 "erin_before_demotion", "PUT", f"/api/v1/queue/{Q}/processor/pause", 403, after=resume_processor)
        self.add("erin (demoted admin, pre-demotion token): cannot list alice's private board",
                 "erin_before_demotion", "GET", "/api/v1/images/", 403,
                 params={"board_id": self.board("alice_private"), "limit": 10, "offset": 0})
        self.add("erin (demoted admin, pre-demotion token): still reads her own image", "erin_before_demotion",
                 "GET", f"/api/v1/images/i/{self.img('erin_uncat_1')}", 200)
        self.add("erin (demoted, fresh token): GET /auth/users is refused", "erin_after_demotion", "GET",
                 "/api/v1/auth/users", 403)
        self.add("erin (demoted): her image on bob's private board stays hers to read", "erin_after_demotion",
                 "GET", f"/api/v1/images/i/{self.img('erin_on_bob_private')}", 200)
        self.add("dave (deactivated, old token): GET /auth/me is 401", "dave_before_deactivation", "GET",
                 "/api/v1/auth/me", 401)
        self.add("dave (deactivated, old token): cannot read his own image", "dave_before_deactivation", "GET",
                 f"/api/v1/images/i/{self.img('dave_uncat_1')}", 401)
        self.add("dave (deactivated, old token): cannot list boards", "dave_before_deactivation", "GET",
                 "/api/v1/boards/", 401, params={"all": "true"})
        self.add("dave (deactivated, old token): cannot enqueue", "dave_before_deactivation", "POST",
                 f"/api/v1/queue/{Q}/enqueue_batch", 401, body={"batch": {"graph": g_add(1, 2), "runs": 1}})
        self.add("dave (deactivated): cannot log in", None, "POST", "/api/v1/auth/login", 403,
                 body={"email": "dave@example.com", "password": "DavePass1234"})
        self.add("login with a wrong password is 401", None, "POST", "/api/v1/auth/login", 401,
                 body={"email": "alice@example.com", "password": "wrong-password-1"})
        self.add("system@system.invokeai cannot log in", None, "POST", "/api/v1/auth/login", 401,
                 body={"email": "system@system.invokeai", "password": ""})
        self.add("garbage bearer token is 401", None, "GET", "/api/v1/auth/me", 401, token="not-a-jwt")
        if secret:
            sys_tok = jwt_hs256({"user_id": "system", "email": "system@system.invokeai", "is_admin": True,
                                 "exp": exp}, secret)
            self.add("forged token for the system user: GET /auth/me is 401", None, "GET", "/api/v1/auth/me", 401,
                     token=sys_tok)
            self.add("forged token for the system user: POST /auth/users is 401", None, "POST", "/api/v1/auth/users",
                     401, token=sys_tok, body={"email": "y@example.com", "display_name": "y",
                                               "password": "YPass12345", "is_admin": True})
            self.add("forged token for the system user: cannot list images", None, "GET", "/api/v1/images/", 401,
                     token=sys_tok, params={"limit": 5, "offset": 0})
            claims = jwt_claims(ctx.tokens["alice"])
            forged = jwt_hs256(dict(claims, is_admin=True, exp=exp), secret)
            self.add("alice with an is_admin=true claim (correctly signed): GET /auth/users is 403", None, "GET",
                     "/api/v1/auth/users", 403, token=forged)
            self.add("alice with an is_admin=true claim: cannot read bob's private image", None, "GET",
                     f"/api/v1/images/i/{self.img('bob_private_1')}", 403, token=forged)
            expired = jwt_hs256(dict(claims, exp=int(time.time()) - 60), secret)
            self.add("expired token is 401", None, "GET", "/api/v1/auth/me", 401, token=expired)
        bad_sig = ctx.tokens["alice"][:-4] + ("AAAA" if not ctx.tokens["alice"].endswith("AAAA") else "BBBB")
        self.add("token with a bad signature is 401", None, "GET", "/api/v1/auth/me", 401, token=bad_sig)

        # ---- boards (QA steps 2-7 of board sharing)
        all_boards = {b["board_id"] for b in m["boards"].values()}
        for who in ("alice", "bob", "carol", "admin"):
            exp_set = {b["board_id"] for r, b in m["boards"].items() if self.r_board(who, r)}
            self.add(f"{who}: board list shows own + shared/public boards", who, "GET", "/api/v1/boards/", 200,
                     params={"all": "true", "include_archived": "true"},
                     check=self.set_check(lambda j: [b["board_id"] for b in j], exp_set, all_boards))
        for who in ("bob", "admin", "alice", None):
            for br in ("alice_private", "alice_shared", "alice_public"):
                exp_ = (401,) if who is None else self.st(self.r_board(who, br))
                self.add(f"{who or 'anon'}: GET board {br}", who, "GET", f"/api/v1/boards/{self.board(br)}", exp_)
        self.add("bob: GET unknown board is 404", "bob", "GET", "/api/v1/boards/no-such-board", 404)
        for who, br in (("bob", "alice_private"), ("bob", "alice_shared"), ("bob", "alice_public"),
                        ("alice", "alice_public"), ("admin", "bob_private"), ("carol", "bob_private")):
            on_board = self.images_where(lambda r, i, br=br: i["board"] == br)
            ok = self.r_board(who, br)
            self.add(f"{who}: image_names of board {br}", who, "GET", f"/api/v1/boards/{self.board(br)}/image_names",
                     self.st(ok), check=self.set_check(lambda j: j, on_board, known) if ok else None)
        own_uncat = self.images_where(lambda r, i: i["owner"] == "bob" and i["board"] is None)
        self.add("bob: boards/none/image_names lists only his own uncategorized images", "bob", "GET",
                 "/api/v1/boards/none/image_names", 200, check=self.set_check(lambda j: j, own_uncat, known))
        all_uncat = self.images_where(lambda r, i: i["board"] is None)
        self.add("admin: boards/none/image_names lists every uncategorized image", "admin", "GET",
                 "/api/v1/boards/none/image_names", 200, check=self.set_check(lambda j: j, all_uncat, known))
        self.add("anon: boards/none/image_names needs a login", None, "GET", "/api/v1/boards/none/image_names", 401)

        # ---- images: single-image reads (R_IMG), media, metadata
        for who in ("alice", "bob", "carol", "admin"):
            for role in ("alice_private_1", "alice_shared_1", "alice_public_1", "alice_uncat_1",
                         "bob_on_alice_public", "carol_on_alice_public", "erin_on_bob_private"):
                ok = self.r_img(who, role)
                self.add(f"{who}: GET image {role}", who, "GET", f"/api/v1/images/i/{self.img(role)}", self.st(ok))
        for suffix in ("metadata", "workflow", "urls", "full", "thumbnail"):
            self.add(f"bob: GET alice's private image /{suffix} is refused", "bob", "GET",
                     f"/api/v1/images/i/{self.img('alice_private_1')}/{suffix}", 403)
            self.add(f"anon: GET image /{suffix} needs a login", None, "GET",
                     f"/api/v1/images/i/{self.img('alice_private_1')}/{suffix}", 401)
            self.add(f"alice: GET her own image /{suffix}", "alice", "GET",
                     f"/api/v1/images/i/{self.img('alice_private_1')}/{suffix}", 200)
            self.add(f"bob: GET alice's shared-board image /{suffix}", "bob", "GET",
                     f"/api/v1/images/i/{self.img('alice_shared_1')}/{suffix}",
                     self.st(self.r_img("bob", "alice_shared_1")))
        self.add("anon: HEAD image /full needs a login", None, "HEAD",
                 f"/api/v1/images/i/{self.img('alice_private_1')}/full", 401)
        self.add("alice: HEAD her own image /full", "alice", "HEAD",
                 f"/api/v1/images/i/{self.img('alice_private_1')}/full", 200)
        self.add("bob: HEAD alice's private image /full is refused", "bob", "HEAD",
                 f"/api/v1/images/i/{self.img('alice_private_1')}/full", 403)

        def private_cache(resp):
            cc = (resp.header("cache-control") or "").replace(" ", "").lower()
            if "private" in cc and "no-store" in cc:
                return None
            return "leak", f"private media served with Cache-Control: {resp.header('cache-control')!r}"
        self.add("alice: her image /full is served Cache-Control: private, no-store", "alice", "GET",
                 f"/api/v1/images/i/{self.img('alice_private_1')}/full", 200, check=private_cache)
        self.add("bob: unknown image is 404 Image not found (gone is not denied, as 6.14.2 answers)", "bob", "GET",
                 "/api/v1/images/i/no-such-image.png", 404)
        self.add("bob: DELETE of an unknown image stays 403 (mutations refuse before any lookup, as 6.14.2)", "bob",
                 "DELETE", "/api/v1/images/i/no-such-image.png", 403)

        # media by cookie (the browser's <img> cannot send a Bearer header): a browser-like client whose cookie
        # jar keeps what the login set, and no Authorization header
        def login_cookie(resp):
            jar = cookies_from(resp)
            ctx.state["alice_cookies"] = jar
            if resp.status != 200:
                return "false_deny", "login failed"
            if not jar:
                return "fail", "login response set no cookie for media"
            return None
        self.add("alice: login returns a media/session cookie", None, "POST", "/api/v1/auth/login", 200,
                 body={"email": "alice@example.com", "password": "AlicePass123"}, check=login_cookie,
                 client="alice_browser")
        self.add("alice (cookie only): GET her own image /full", None, "GET",
                 f"/api/v1/images/i/{self.img('alice_private_1')}/full", 200, client="alice_browser")
        self.add("alice (cookie only): GET her own image /thumbnail", None, "GET",
                 f"/api/v1/images/i/{self.img('alice_private_1')}/thumbnail", 200, client="alice_browser")
        self.add("alice (cookie only): GET bob's private image /full is refused", None, "GET",
                 f"/api/v1/images/i/{self.img('bob_private_1')}/full", 403, client="alice_browser")

        # ---- image listings (holes 2, 15; F_IMGLIST)
        lim = {"limit": 200, "offset": 0}
        items = lambda j: [i["image_name"] for i in j["items"]]  # noqa: E731
        names = lambda j: j["image_names"]  # noqa: E731
        for who, br in (("bob", "alice_private"), ("bob", "alice_shared"), ("bob", "alice_public"),
                        ("alice", "alice_private"), ("admin", "alice_private"), ("carol", "bob_private")):
            ok = self.r_board(who, br)
            on_board = self.images_where(lambda r, i, br=br: i["board"] == br)
            self.add(f"{who}: GET images?board_id={br}", who, "GET", "/api/v1/images/", self.st(ok),
                     params=dict(lim, board_id=self.board(br)),
                     check=self.set_check(items, on_board, known) if ok else None)
            self.add(f"{who}: GET images/names?board_id={br}", who, "GET", "/api/v1/images/names", self.st(ok),
                     params={"board_id": self.board(br)},
                     check=self.set_check(names, on_board, known) if ok else None)
        for who in ("bob", "alice"):
            own = self.images_where(lambda r, i, who=who: i["owner"] == who)
            foreign = known - own
            self.add(f"{who}: GET images without board_id lists exactly own images", who, "GET", "/api/v1/images/",
                     200, params=lim, check=self.set_check(items, own, known))
            self.add(f"{who}: GET images/names without board_id lists exactly own images", who, "GET",
                     "/api/v1/images/names", 200, check=self.set_check(names, own, known))
            self.add(f"{who}: GET images without board_id: main's order and paging", who, "GET", "/api/v1/images/",
                     200, params={"limit": 2, "offset": 1}, check=self.own_page_check(who, offset=1, limit=2))
            own_inter = self.images_where(lambda r, i, who=who: i["owner"] == who and i.get("is_intermediate"))
            self.add(f"{who}: intermediates count is {len(own_inter)} (own only)", who, "GET",
                     "/api/v1/images/intermediates", 200,
                     check=lambda resp, n=len(own_inter): None if resp.json() == n else (
                         "leak" if isinstance(resp.json(), int) and resp.json() > n else "fail",
                         f"count {resp.json()} != own {n}"))
            self.add(f"{who}: images without board_id never shows others' images (deny acceptable)", who, "GET",
                     "/api/v1/images/", (200, 403), params=lim, check=self.no_foreign(items, foreign))
            own_uncat = self.images_where(lambda r, i, who=who: i["owner"] == who and i["board"] is None)
            self.add(f"{who}: GET images?board_id=none lists own uncategorized only", who, "GET", "/api/v1/images/",
                     200, params=dict(lim, board_id="none"), check=self.set_check(items, own_uncat, known))
        self.add("admin: GET images without board_id lists every image", "admin", "GET", "/api/v1/images/", 200,
                 params=lim, check=self.set_check(items, known, known))

        # images_by_names: silent filter in main
        ask = [self.img(r) for r in ("alice_private_1", "alice_shared_1", "bob_uncat_1", "carol_uncat_1")]
        exp_set = {self.img(r) for r in ("alice_private_1", "alice_shared_1", "bob_uncat_1", "carol_uncat_1")
                   if self.r_img("bob", r)}
        self.add("bob: images_by_names returns only images he may read", "bob", "POST",
                 "/api/v1/images/images_by_names", 200, body={"image_names": ask},
                 check=self.set_check(lambda j: [i["image_name"] for i in j], exp_set, known))
        self.add("bob: images_by_names never returns alice's private image (deny acceptable)", "bob", "POST",
                 "/api/v1/images/images_by_names", (200, 403), body={"image_names": [self.img("alice_private_1")]},
                 check=self.no_foreign(lambda j: [i["image_name"] for i in j], {self.img("alice_private_1")}))

        # ---- bulk download (review finding: cross-user exfiltration)
        self.add("bob: bulk download of alice's private image is refused", "bob", "POST", "/api/v1/images/download",
                 403, body={"image_names": [self.img("alice_private_1")]})
        self.add("bob: bulk download of alice's private board is refused", "bob", "POST", "/api/v1/images/download",
                 403, body={"board_id": self.board("alice_private")})
        self.add("bob: bulk download of alice's shared board", "bob", "POST", "/api/v1/images/download",
                 self.st(self.r_board("bob", "alice_shared"), 202), body={"board_id": self.board("alice_shared")})
        self.add("bob: bulk download of his own image", "bob", "POST", "/api/v1/images/download", 202,
                 body={"image_names": [self.img("bob_uncat_1")]})
        self.add("admin: bulk download of anyone's image", "admin", "POST", "/api/v1/images/download", 202,
                 body={"image_names": [self.img("alice_private_1")]})

        def wait_bulk():
            t = ctx.state.get("bulk_alice_t")
            if t:
                time.sleep(max(0.0, 2.5 - (time.time() - t)))
            return f"/api/v1/images/download/{ctx.state.get('bulk_alice', 'missing.zip')}"
        self.add("bob: fetching alice's bulk-download zip is refused", "bob", "GET", wait_bulk, 403)
        self.add("anon: fetching alice's bulk-download zip needs a login", None, "GET",
                 lambda: f"/api/v1/images/download/{ctx.state.get('bulk_alice', 'missing.zip')}", 401)

        self.add("alice: fetches her own bulk-download zip", "alice", "GET",
                 lambda: f"/api/v1/images/download/{ctx.state.get('bulk_alice', 'missing.zip')}", 200,
                 note="retried for up to 10 s while the zip is being built")

        # ---- workflows (workflow isolation QA steps 1-8, review finding 2)
        W = lambda k: ctx.state.get(k) or "missing"  # noqa: E731
        self.add("bob: GET alice's private workflow is refused", "bob", "GET",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}", 403)
        self.add("alice: GET her private workflow", "alice", "GET",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}", 200)
        self.add("admin: GET alice's private workflow", "admin", "GET",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}", 200)
        self.add("anon: GET a workflow needs a login", None, "GET",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}", 401)
        self.add("bob: GET alice's shared workflow", "bob", "GET",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_shared')}", self.st(self.wf_owner))
        self.add("bob: GET unknown workflow is 404", "bob", "GET", "/api/v1/workflows/i/no-such-workflow", 404)
        if "wf_default" in m["workflows"]:
            self.add("bob: GET a shipped default workflow", "bob", "GET",
                     f"/api/v1/workflows/i/{m['workflows']['wf_default']['workflow_id']}", 200)
        self.add("bob: GET alice's private workflow thumbnail is refused (review finding 2; stricter than main)",
                 "bob", "GET", lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}/thumbnail", 403,
                 note="main leaves this route public; the guard closes the review finding")
        self.add("alice: GET her private workflow thumbnail", "alice", "GET",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}/thumbnail", 200)
        if self.wf_owner:
            wm = m["workflows"]
            self.add("bob: GET alice's private workflow (made outside the guard) is refused", "bob", "GET",
                     f"/api/v1/workflows/i/{wm['wf_alice_private']['workflow_id']}", 403)
            self.add("bob: GET alice's shared workflow (made outside the guard)", "bob", "GET",
                     f"/api/v1/workflows/i/{wm['wf_alice_shared']['workflow_id']}", 200)
            self.add("bob: GET the private thumbnail of alice's workflow made outside the guard is refused",
                     "bob", "GET", f"/api/v1/workflows/i/{wm['wf_alice_private']['workflow_id']}/thumbnail", 403)

        def wf_ids(j):
            return [w["workflow_id"] for w in j["items"]]

        def wf_universe():
            return {ctx.state.get(k) for k in ("wf_g_alice_private", "wf_g_alice_shared", "wf_g_bob_private")} - {None}

        def lazy_set_check(extract, want_keys):
            def chk(resp):
                want = {ctx.state.get(k) for k in want_keys} - {None}
                return self.set_check(extract, want, wf_universe())(resp)
            return chk
        self.add("bob: 'Your Workflows' (categories=user) lists only his own", "bob", "GET", "/api/v1/workflows/", 200,
                 params={"categories": "user", "per_page": 200, "page": 0},
                 check=lazy_set_check(wf_ids, ["wf_g_bob_private"]))
        self.add("alice: 'Your Workflows' lists both of hers", "alice", "GET", "/api/v1/workflows/", 200,
                 params={"categories": "user", "per_page": 200, "page": 0},
                 check=lazy_set_check(wf_ids, ["wf_g_alice_private", "wf_g_alice_shared"]))
        self.add("bob: the workflow library without a category filter never lists alice's", "bob", "GET",
                 "/api/v1/workflows/", 200, params={"per_page": 200, "page": 0},
                 check=lambda resp: self.no_foreign(wf_ids, {ctx.state.get("wf_g_alice_private")} - {None})(resp))

        def tags_check(want_secret):
            def chk(resp):
                tags = resp.json() if isinstance(resp.json(), list) else []
                if ("alice-secret" in tags) != want_secret:
                    return ("leak" if not want_secret else "fail", f"alice-secret in tags={tags}")
                return None if "e2e" in tags else ("fail", f"own tag e2e missing from {tags}")
            return chk
        self.add("bob: workflow tags never include alice's private tag", "bob", "GET", "/api/v1/workflows/tags",
                 200, params={"categories": "user"}, check=tags_check(False))
        self.add("alice: workflow tags include her private tag", "alice", "GET", "/api/v1/workflows/tags",
                 200, params={"categories": "user"}, check=tags_check(True))
        self.add("bob: counts_by_tag does not count alice's private workflow", "bob", "GET",
                 "/api/v1/workflows/counts_by_tag", 200, params={"tags": "alice-secret", "categories": "user"},
                 check=lambda resp: None if resp.json() == {"alice-secret": 0} else ("leak", f"{resp.json()}"))
        self.add("bob: counts_by_category agrees with his own 'Your Workflows' list", "bob", "GET",
                 "/api/v1/workflows/counts_by_category", 200, params={"categories": "user"},
                 check=self.wf_count_check("bob"))
        if self.wf_owner:
            self.add("bob: 'Shared Workflows' (is_public=true) lists alice's shared one, not her private one", "bob",
                     "GET", "/api/v1/workflows/", 200, params={"is_public": "true", "per_page": 200, "page": 0},
                     check=lazy_set_check(wf_ids, ["wf_g_alice_shared"]))
        self.add("anon: workflows tags/counts need a login", None, "GET", "/api/v1/workflows/counts_by_category", 401,
                 params={"categories": "user"})

        # ---- style presets
        P = lambda k: ctx.state.get(k) or "missing"  # noqa: E731
        sp = m["style_presets"]
        self.add("bob: GET alice's private style preset is refused", "bob", "GET",
                 lambda: f"/api/v1/style_presets/i/{P('sp_g_alice_private')}", 403)
        self.add("alice: GET her own style preset", "alice", "GET",
                 lambda: f"/api/v1/style_presets/i/{P('sp_g_alice_private')}", 200)
        self.add("bob: GET alice's private style preset image is refused", "bob", "GET",
                 lambda: f"/api/v1/style_presets/i/{P('sp_g_alice_private')}/image", 403)
        if "sp_default" in sp:
            self.add("bob: GET a shipped default style preset", "bob", "GET",
                     f"/api/v1/style_presets/i/{sp['sp_default']['id']}", 200)
        if sp["sp_alice"]["is_public"]:
            self.add("bob: GET alice's public style preset", "bob", "GET", f"/api/v1/style_presets/i/{sp['sp_alice']['id']}",
                     200)
        if sp["sp_bob"]["user_id"] == self.uid("bob"):
            self.add("carol: GET bob's private style preset (made outside the guard) is refused", "carol", "GET",
                     f"/api/v1/style_presets/i/{sp['sp_bob']['id']}", 403)

        def preset_ids(j):
            return [p["id"] for p in j]
        universe_sp = lambda: {P("sp_g_alice_private"), P("sp_g_bob_private")}  # noqa: E731

        def sp_check(resp):
            return self.set_check(preset_ids, {P("sp_g_bob_private")}, universe_sp())(resp)
        self.add("bob: style preset list shows his own, not alice's private one", "bob", "GET", "/api/v1/style_presets/",
                 200, check=sp_check)

        # ---- system prompts (main/6.14 only)
        if self.sysprompts:
            s = m["system_prompts"]
            self.add("carol: GET bob's private system prompt is refused", "carol", "GET",
                     f"/api/v1/system_prompts/i/{s['sysprompt_bob_private']['id']}", 403)
            self.add("carol: GET alice's public system prompt", "carol", "GET",
                     f"/api/v1/system_prompts/i/{s['sysprompt_alice_public']['id']}", 200)
            self.add("carol: system prompt list hides bob's private one", "carol", "GET", "/api/v1/system_prompts/",
                     200, check=self.set_check(lambda j: [p["id"] for p in j], {s["sysprompt_alice_public"]["id"]},
                                               {s["sysprompt_alice_public"]["id"], s["sysprompt_bob_private"]["id"]}))
            self.add("anon: system prompts need a login", None, "GET", "/api/v1/system_prompts/", 401)

        # ---- client state is per user
        def cs_is(owner):
            want = m["client_state"][owner]["value"]

            def chk(resp):
                return None if resp.json() == want else ("leak", f"got {resp.text[:120]}, expected {owner}'s value")
            return chk
        self.add("bob: client_state get_by_key returns his own value", "bob", "GET",
                 f"/api/v1/client_state/{Q}/get_by_key", 200, params={"key": "e2e_note"}, check=cs_is("bob"))

        # ---- queue (hole 25, R5-R8)
        qi = m["queue_items"]
        foreign_markers = {self.uid(r) for r in ("alice", "carol", "dave", "erin", "admin")}
        foreign_markers |= {m["users"][r]["email"] for r in ("alice", "carol", "dave", "erin")}
        foreign_markers |= {q["batch_id"] for q in qi.values() if q["owner"] != "bob"}

        def sanitized(items_of):
            def chk(resp):
                try:
                    its = items_of(resp.json())
                except Exception as e:  # noqa: BLE001
                    return "fail", f"cannot read queue items: {e}"
                for it in its:
                    if not isinstance(it, dict) or it.get("user_id") == self.uid("bob"):
                        continue
                    blob = json.dumps(it)
                    hits = [x for x in foreign_markers if x and x in blob]
                    if hits:
                        return "leak", f"item {it.get('item_id')} of another user shows {hits[:2]}"
                return None
            return chk
        # The guard sanitizes 6.12's queue items itself (response filter, R5): no xfail here.
        self.add("bob: queue list_all redacts other users' items", "bob", "GET", f"/api/v1/queue/{Q}/list_all", 200,
                 check=sanitized(lambda j: j))
        self.add("bob: queue item of alice is redacted", "bob", "GET",
                 f"/api/v1/queue/{Q}/i/{qi['q_alice_add_1']['item_id']}", 200, check=sanitized(lambda j: [j]))
        self.add("bob: items_by_ids redacts alice's item", "bob", "POST", f"/api/v1/queue/{Q}/items_by_ids", 200,
                 body={"item_ids": [qi["q_alice_add_1"]["item_id"], qi["q_bob_add"]["item_id"]]},
                 check=sanitized(lambda j: j))
        self.add("alice: her own queue item is not redacted", "alice", "GET",
                 f"/api/v1/queue/{Q}/i/{qi['q_alice_add_1']['item_id']}", 200,
                 check=lambda r: None if (r.json() or {}).get("batch_id") == qi["q_alice_add_1"]["batch_id"]
                 else ("false_deny", "owner sees a redacted item"))

        def batch_counts(resp):
            j = resp.json() or {}
            return None if j.get("total", 0) == 0 else ("leak", f"bob sees counts of alice's batch: {j}")
        self.add("bob: status of alice's batch counts none of her items", "bob", "GET",
                 f"/api/v1/queue/{Q}/b/{qi['q_alice_add_1']['batch_id']}/status", 200, check=batch_counts)
        self.add("anon: batch status needs a login", None, "GET",
                 f"/api/v1/queue/{Q}/b/{qi['q_alice_add_1']['batch_id']}/status", 401)
        self.add("anon: queue item needs a login", None, "GET", f"/api/v1/queue/{Q}/i/{qi['q_alice_add_1']['item_id']}",
                 401)

        # virtual boards by date (6.13+; every released version picks covers among all users' images)
        if not self.v612:
            bob_imgs = self.images_where(lambda r, i: i["owner"] == "bob")
            self.add("bob: by_date virtual boards show only his own covers", "bob", "GET",
                     "/api/v1/virtual_boards/by_date", 200,
                     check=self.no_foreign(lambda j: [v.get("cover_image_name") for v in j], known - bob_imgs))

        # ---- recall (review fix: referenced images need read access)
        self.add("bob: recall referencing alice's private image is refused", "bob", "POST", f"/api/v1/recall/{Q}", 403,
                 body=recall_body(self.img("alice_private_1")))
        self.add("bob: recall referencing his own image", "bob", "POST", f"/api/v1/recall/{Q}", 200,
                 body=recall_body(self.img("bob_uncat_1")),
                 xfail=("6.12 stores recall parameters under client_state.user_id = the URL's queue_id "
                        "(FK failure for 'default'); the guard would have to rewrite the request") if self.v612 else None)
        self.add("anon: recall needs a login", None, "POST", f"/api/v1/recall/{Q}", 401,
                 body=recall_body(self.img("bob_uncat_1")))

        # ---- utilities image-to-prompt (main/6.14)
        # (needs a model; only the authorization step is observable: 403 before any model lookup)

        # ---- 6.12 batch status: the recount must not show the origin/destination of alice's batch either
        if self.v612:
            def batch_nulls(resp):
                j = resp.json() or {}
                shown = {k: j.get(k) for k in ("origin", "destination") if j.get(k) is not None}
                if shown:
                    return "leak", f"bob sees alice's batch {shown}"
                if j.get("total", 0) != 0:
                    return "leak", f"bob sees counts of alice's batch: {j}"
                return None
            self.add("bob: status of alice's batch has origin and destination null (counts only his own)", "bob",
                     "GET", f"/api/v1/queue/{Q}/b/{qi['q_alice_add_1']['batch_id']}/status", 200, check=batch_nulls)

        self.gzip_read_cases(sanitized)

    # ================================================================== gzip regressions (reads)
    def gzip_read_cases(self, sanitized):
        """The guard reads response bodies (owners, cookies, list filters): they must work when InvokeAI gzips."""
        ctx = self.ctx
        S = lambda k: ctx.state.get(k) or "missing"  # noqa: E731
        self.add("gzip: bob GET alice's workflow created with a gzipped response is refused", "bob", "GET",
                 lambda: f"/api/v1/workflows/i/{S('wf_gz_alice')}", 403)
        self.add("gzip: alice GET her workflow created with a gzipped response", "alice", "GET",
                 lambda: f"/api/v1/workflows/i/{S('wf_gz_alice')}", 200)
        self.add("gzip: bob GET alice's private style preset created with a gzipped response is refused", "bob", "GET",
                 lambda: f"/api/v1/style_presets/i/{S('sp_gz_alice')}", 403)
        self.add("gzip: alice GET her style preset created with a gzipped response", "alice", "GET",
                 lambda: f"/api/v1/style_presets/i/{S('sp_gz_alice')}", 200)

        def zip_built():  # bob asks first (InvokeAI deletes a zip once served), 2.5 s after the request
            t = ctx.state.get("bulk_gz_alice_t")
            if t:
                time.sleep(max(0.0, 2.5 - (time.time() - t)))
            return f"/api/v1/images/download/{S('bulk_gz_alice')}"
        self.add("gzip: bob fetching alice's zip requested with gzip is refused", "bob", "GET", zip_built, 403)
        self.add("gzip: alice fetches her bulk-download zip requested with gzip (polled until built)", "alice", "GET",
                 lambda: f"/api/v1/images/download/{S('bulk_gz_alice')}", 200,
                 note="retried for up to 20 s while the zip is being built (404)")

        # login with gzip accepted -> session cookie -> <img src> with that cookie only (browser-like cookie jars)
        def session_cookie(resp):
            names = [sc.split("=", 1)[0].strip() for sc in resp.headers.get("set-cookie", [])]
            if SESSION_COOKIE not in names:
                return "fail", (f"no {SESSION_COOKIE} Set-Cookie (Set-Cookie names {names}, Content-Encoding "
                                f"{resp.header('content-encoding') or 'none'})")
            return None
        for who, pw in (("alice", "AlicePass123"), ("bob", "BobPass1234")):
            self.add(f"gzip: {who} logs in with gzip accepted and gets the {SESSION_COOKIE} cookie", None, "POST",
                     "/api/v1/auth/login", 200, client=f"{who}_gzip_browser", check=session_cookie,
                     body={"email": f"{who}@example.com", "password": pw, "remember_me": False})
        for suffix in ("full", "thumbnail"):
            self.add(f"gzip: alice (cookie jar only) GET her own image /{suffix}", None, "GET",
                     f"/api/v1/images/i/{self.img('alice_private_1')}/{suffix}", 200, client="alice_gzip_browser")
            self.add(f"gzip: bob (cookie jar only) GET alice's private image /{suffix} is refused", None, "GET",
                     f"/api/v1/images/i/{self.img('alice_private_1')}/{suffix}", 403, client="bob_gzip_browser")

        # 6.12 list filters on gzipped bodies (200 with the filtered list, not 503). 12 more uncategorized images
        # of carol's first, so that the unfiltered upstream name list is above the gzip threshold.
        known = set(self.known_images())

        def pad_uncategorized(_r):
            cl = ctx.up or ctx.c
            names = []
            for i in range(12):
                r = cl.request("POST", "/api/v1/images/upload", ctx.tokens["carol"],
                               params={"image_category": "user", "is_intermediate": "false"},
                               files=[("file", f"pad{i}.png", png(8, 8, (i, 2 * i, 3 * i)), "image/png")])
                if r.status not in (200, 201):
                    return "fail", f"carol's upload {i} -> {r.status} {r.detail()}"
                names.append(r.json()["image_name"])
            ctx.state["gzip_pad_names"] = names
            return None
        self.add("setup: carol uploads 12 uncategorized images (unfiltered name lists exceed the gzip threshold)",
                 None, "MULTI", "/api/v1/images/upload", (0,), check=pad_uncategorized)
        bob_uncat = self.images_where(lambda r, i: i["owner"] == "bob" and i["board"] is None)

        def only_bobs(resp):
            universe = known | set(ctx.state.get("gzip_pad_names", []))
            return self.set_check(lambda j: j, bob_uncat, universe)(resp)
        self.add("gzip: bob boards/none/image_names lists only his own names (list filter on a gzipped body)", "bob",
                 "GET", "/api/v1/boards/none/image_names", 200, check=only_bobs)
        self.add("gzip: bob queue list_all redacts other users' items (filter on a gzipped body)", "bob", "GET",
                 f"/api/v1/queue/{Q}/list_all", 200, check=sanitized(lambda j: j))

    # ================================================================== phase 2: mutations (victims)
    def write_cases(self):
        m, ctx = self.m, self.ctx
        B = self.board

        # -- shared-board write bypass (review finding 1) and board_images (hole 17)
        self.add("bob: DELETE /images/i/ of an image on alice's shared board is refused", "bob", "DELETE",
                 f"/api/v1/images/i/{self.img('victim_alice_shared_del')}", 403,
                 after=self.image_exists("victim_alice_shared_del"))
        self.add("bob: moving alice's shared-board image to his board (POST /board_images/) is refused", "bob", "POST",
                 "/api/v1/board_images/", 403,
                 body={"board_id": B("bob_private"), "image_name": self.img("victim_alice_shared_move")},
                 after=self.image_on_board("victim_alice_shared_move", "alice_shared"))
        self.add("bob: removing an image from alice's shared board (DELETE /board_images/) is refused", "bob",
                 "DELETE", "/api/v1/board_images/", 403, body={"image_name": self.img("victim_alice_shared_unlink")},
                 after=self.image_on_board("victim_alice_shared_unlink", "alice_shared"))
        self.add("bob: batch-removing from alice's shared board has no effect (403 or skipped)", "bob", "POST",
                 "/api/v1/board_images/batch/delete", (201, 403),
                 body={"image_names": [self.img("victim_alice_shared_batch_unlink")]},
                 after=self.image_on_board("victim_alice_shared_batch_unlink", "alice_shared"))
        self.add("bob: pulling alice's image onto his own board is refused (OWN_IMG)", "bob", "POST",
                 "/api/v1/board_images/", 403,
                 body={"board_id": B("bob_private"), "image_name": self.img("victim_alice_for_bob_board")},
                 after=self.image_on_board("victim_alice_for_bob_board", None))
        self.add("bob: adding his own image to alice's shared board is refused", "bob", "POST", "/api/v1/board_images/",
                 403, body={"board_id": B("alice_shared"), "image_name": self.img("victim_bob_to_alice_shared")},
                 after=self.image_on_board("victim_bob_to_alice_shared", None))
        self.add("bob: adding his own image to alice's private board is refused", "bob", "POST",
                 "/api/v1/board_images/", 403,
                 body={"board_id": B("alice_private"), "image_name": self.img("victim_bob_to_alice_private")},
                 after=self.image_on_board("victim_bob_to_alice_private", None))
        self.add("bob: batch-adding his own image to alice's shared board is refused", "bob", "POST",
                 "/api/v1/board_images/batch", 403,
                 body={"board_id": B("alice_shared"), "image_names": [self.img("victim_bob_batch_to_alice_shared")]},
                 after=self.image_on_board("victim_bob_batch_to_alice_shared", None))
        ok_pub = self.w_board("bob", "alice_public")
        self.add("bob: adding his own image to alice's public board", "bob", "POST", "/api/v1/board_images/",
                 self.st(ok_pub, 201), body={"board_id": B("alice_public"),
                                             "image_name": self.img("victim_bob_to_alice_public")},
                 after=None if ok_pub else self.image_on_board("victim_bob_to_alice_public", None))
        self.add("alice: removing her own image from her board", "alice", "DELETE", "/api/v1/board_images/", (200, 201),
                 body={"image_name": self.img("victim_alice_own_unlink")})
        self.add("anon: POST /board_images/ needs a login", None, "POST", "/api/v1/board_images/", 401,
                 body={"board_id": B("bob_private"), "image_name": self.img("alice_private_2")})

        # -- uploads (hole 16; public-board upload finding)
        up = lambda: [("file", "x.png", png(9, 9, (9, 99, 199)), "image/png")]  # noqa: E731
        for br in ("alice_private", "alice_shared", "alice_public"):
            ok = self.w_board("bob", br)
            self.add(f"bob: upload into {br}", "bob", "POST", "/api/v1/images/upload", self.st(ok, 201),
                     params={"board_id": B(br), "image_category": "user", "is_intermediate": "false"}, files=up)
        self.add("bob: upload into his own board", "bob", "POST", "/api/v1/images/upload", 201,
                 params={"board_id": B("bob_private"), "image_category": "user", "is_intermediate": "false"}, files=up)
        self.add("bob: upload uncategorized", "bob", "POST", "/api/v1/images/upload", 201,
                 params={"image_category": "user", "is_intermediate": "false"}, files=up)
        self.add("bob: upload into an unknown board is 404", "bob", "POST", "/api/v1/images/upload", 404,
                 params={"board_id": "no-such-board", "image_category": "user", "is_intermediate": "false"}, files=up)
        self.add("anon: upload needs a login", None, "POST", "/api/v1/images/upload", 401,
                 params={"image_category": "user", "is_intermediate": "false"}, files=up)

        # -- image mutations (hole 14, W_IMG)
        self.add("bob: DELETE alice's private image is refused", "bob", "DELETE",
                 f"/api/v1/images/i/{self.img('victim_alice_private_del')}", 403,
                 after=self.image_exists("victim_alice_private_del"))
        self.add("bob: DELETE alice's uncategorized image is refused", "bob", "DELETE",
                 f"/api/v1/images/i/{self.img('victim_alice_uncat_del')}", 403,
                 after=self.image_exists("victim_alice_uncat_del"))
        self.add("bob: PATCH alice's private image is refused", "bob", "PATCH",
                 f"/api/v1/images/i/{self.img('victim_alice_private_patch')}", 403, body={"starred": True})
        self.add("bob: star alice's private image has no effect (403 or skipped)", "bob", "POST",
                 "/api/v1/images/star", (200, 403), body={"image_names": [self.img("alice_private_2")]},
                 after=self.image_starred("alice_private_2", False))
        self.add("bob: unstar alice's image has no effect (403 or skipped)", "bob", "POST", "/api/v1/images/unstar",
                 (200, 403), body={"image_names": [self.img("alice_uncat_1")]},
                 after=self.image_starred("alice_uncat_1", True))
        self.add("bob: batch delete of alice's private image has no effect (403 or skipped)", "bob", "POST",
                 "/api/v1/images/delete", (200, 403), body={"image_names": [self.img("victim_alice_private_batchdel")]},
                 after=self.image_exists("victim_alice_private_batchdel"))
        ok = self.w_img("bob", "victim_alice_public_del")
        self.add("bob: DELETE an image on alice's public board", "bob", "DELETE",
                 f"/api/v1/images/i/{self.img('victim_alice_public_del')}", self.st(ok),
                 after=None if ok else self.image_exists("victim_alice_public_del"))
        self.add("alice: DELETE carol's image on her (alice's) board (board owner may)", "alice", "DELETE",
                 f"/api/v1/images/i/{self.img('victim_carol_on_alice_public_del')}", 200)
        self.add("alice: DELETE her own image", "alice", "DELETE", f"/api/v1/images/i/{self.img('victim_alice_own_del')}",
                 200)

        def gone(resp):
            detail = (resp.json() or {}).get("detail")
            return None if detail == "Image not found" else ("fail", f"detail {detail!r}, expected 'Image not found'")
        for suffix in ("", "/full", "/metadata"):
            self.add(f"alice: GET{suffix or ' the DTO of'} her deleted image is 404 Image not found (gone, not denied: "
                     "the 6.14.2 UI drops the reference)", "alice", "GET",
                     f"/api/v1/images/i/{self.img('victim_alice_own_del')}{suffix}", 404, check=gone)
        self.add("admin: DELETE alice's private image", "admin", "DELETE",
                 f"/api/v1/images/i/{self.img('victim_alice_private_admin_del')}", 200)
        self.add("bob: batch delete of his own image and alice's: his is deleted, hers skipped (main)", "bob",
                 "POST", "/api/v1/images/delete", 200,
                 body={"image_names": [self.img("victim_alice_private_batchdel"), self.img("victim_bob_batchdel")]},
                 check=lambda resp: None if self.img("victim_bob_batchdel") in (resp.json() or {}).get(
                     "deleted_images", []) else ("fail", f"own image not reported deleted: {resp.json()}"),
                 after=self.image_exists("victim_alice_private_batchdel"))
        self.add("alice: star her own image", "alice", "POST", "/api/v1/images/star", 200,
                 body={"image_names": [self.img("alice_uncat_2")]})

        # -- boards
        self.add("bob: rename alice's shared board is refused", "bob", "PATCH", f"/api/v1/boards/{B('alice_shared')}",
                 403, body={"board_name": "pwned"})
        self.add("bob: rename alice's public board is refused", "bob", "PATCH", f"/api/v1/boards/{B('alice_public')}",
                 403, body={"board_name": "pwned"})
        self.add("bob: archive alice's private board is refused", "bob", "PATCH", f"/api/v1/boards/{B('alice_private')}",
                 403, body={"archived": True})
        if self.vis:
            self.add("bob: change visibility of alice's private board is refused", "bob", "PATCH",
                     f"/api/v1/boards/{B('alice_private')}", 403, body={"board_visibility": "public"})
        self.add("bob: DELETE alice's public board is refused", "bob", "DELETE", f"/api/v1/boards/{B('alice_public')}",
                 403)
        self.add("alice: rename her own board", "alice", "PATCH", f"/api/v1/boards/{B('alice_private')}", 201,
                 body={"board_name": "Alice Private (renamed)"})
        self.add("admin: rename bob's board", "admin", "PATCH", f"/api/v1/boards/{B('bob_private')}", 201,
                 body={"board_name": "Bob Private (renamed by admin)"})
        self.add("bob: create a board", "bob", "POST", "/api/v1/boards/", 201, params={"board_name": "bob e2e"})
        # hole 4: a non-admin owner deleting a board with include_images only deletes own images
        carol_img = self.img("carol_on_bob_public_disposable")

        def carol_survives(_resp):
            r = ctx.c.request("GET", f"/api/v1/images/i/{carol_img}", ctx.tokens["admin"])
            return None if r.status == 200 else ("leak", f"carol's contribution was deleted with bob's board ({r.status})")
        self.add("bob: DELETE his board with include_images keeps carol's contribution", "bob", "DELETE",
                 f"/api/v1/boards/{B('bob_public_disposable')}", 200,
                 params={"include_images": "true"}, after=carol_survives)

        # -- workflows (mutations)
        W = lambda k: ctx.state.get(k) or "missing"  # noqa: E731
        wf_body = lambda wid: {"workflow": {"id": wid, "name": "pwned", "author": "bob", "description": "",  # noqa: E731
                                            "version": "1.0.0", "contact": "", "tags": "", "notes": "",
                                            "exposedFields": [], "meta": {"version": "3.0.0", "category": "user"},
                                            "nodes": [], "edges": [], "form": None}}
        self.add("alice: PATCH her own workflow", "alice", "PATCH",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_shared')}", 200,
                 body=lambda: dict(wf_body(W("wf_g_alice_shared")), workflow=dict(
                     wf_body(W("wf_g_alice_shared"))["workflow"], name="alice renamed", author="alice")))
        self.add("bob: PATCH alice's workflow is refused", "bob", "PATCH",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}", 403,
                 body=lambda: wf_body(W("wf_g_alice_private")))
        self.add("bob: PATCH his own path id with alice's workflow in the body is refused", "bob", "PATCH",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_bob_private')}", 403,
                 body=lambda: wf_body(W("wf_g_alice_private")))
        self.add("bob: PATCH alice's shared workflow is refused (edit but not save, QA step 8)", "bob", "PATCH",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_shared')}", 403,
                 body=lambda: wf_body(W("wf_g_alice_shared")))
        self.add("bob: PUT thumbnail on alice's workflow is refused", "bob", "PUT",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}/thumbnail", 403,
                 files=[("image", "t.png", png(4, 4, (200, 0, 0)), "image/png")])
        self.add("bob: DELETE thumbnail of alice's workflow is refused", "bob", "DELETE",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}/thumbnail", 403)
        self.add("bob: PUT opened_at on alice's workflow is refused", "bob", "PUT",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_shared')}/opened_at", 403)
        if self.wf_owner:
            self.add("bob: PATCH is_public of alice's workflow is refused", "bob", "PATCH",
                     lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}/is_public", 403, body={"is_public": True})
        self.add("bob: DELETE alice's workflow is refused", "bob", "DELETE",
                 lambda: f"/api/v1/workflows/i/{W('wf_g_alice_private')}", 403)
        if "wf_default" in m["workflows"]:
            self.add("bob: DELETE a shipped default workflow is refused", "bob", "DELETE",
                     f"/api/v1/workflows/i/{m['workflows']['wf_default']['workflow_id']}", 403)
        self.add("bob: DELETE his own workflow", "bob", "DELETE", lambda: f"/api/v1/workflows/i/{W('wf_g_bob_private')}",
                 200)

        # -- style presets (mutations)
        P = lambda k: ctx.state.get(k) or "missing"  # noqa: E731
        sp = m["style_presets"]
        pdata = lambda name, t="user": [("data", json.dumps({"name": name, "positive_prompt": "{prompt}",  # noqa: E731
                                                             "negative_prompt": "", "type": t}))]
        self.add("alice: PATCH her own style preset", "alice", "PATCH",
                 lambda: f"/api/v1/style_presets/i/{P('sp_g_alice_private')}", 200, files=pdata("alice renamed"))
        self.add("bob: PATCH alice's style preset is refused", "bob", "PATCH",
                 lambda: f"/api/v1/style_presets/i/{P('sp_g_alice_private')}", 403, files=pdata("pwned"))
        self.add("bob: DELETE alice's style preset is refused", "bob", "DELETE",
                 lambda: f"/api/v1/style_presets/i/{P('sp_g_alice_private')}", 403)
        if "sp_default" in sp:
            self.add("bob: PATCH a default style preset is refused", "bob", "PATCH",
                     f"/api/v1/style_presets/i/{sp['sp_default']['id']}", 403, files=pdata("pwned", "default"))
            self.add("bob: DELETE a default style preset is refused", "bob", "DELETE",
                     f"/api/v1/style_presets/i/{sp['sp_default']['id']}", 403)
        self.add("bob: create a type=default style preset is refused", "bob", "POST", "/api/v1/style_presets/", 403,
                 files=pdata("bob default", "default"))
        self.add("bob: import style presets is refused", "bob", "POST", "/api/v1/style_presets/import", 403,
                 files=[("file", "p.csv", b"name,prompt,negative_prompt\nx,{prompt},\n", "text/csv")])
        self.add("bob: DELETE his own style preset", "bob", "DELETE",
                 lambda: f"/api/v1/style_presets/i/{P('sp_g_bob_private')}", 200)
        if self.sysprompts:
            s = m["system_prompts"]
            self.add("carol: PATCH alice's public system prompt is refused", "carol", "PATCH",
                     f"/api/v1/system_prompts/i/{s['sysprompt_alice_public']['id']}", 403, body={"name": "pwned"})
            self.add("carol: DELETE bob's system prompt is refused", "carol", "DELETE",
                     f"/api/v1/system_prompts/i/{s['sysprompt_bob_private']['id']}", 403)

        # -- queue mutations (OWN_Q) and queue-time authorization (hole 5)
        qi = m["queue_items"]
        a1 = qi["q_alice_add_1"]["item_id"]
        self.add("bob: cancel alice's queue item is refused", "bob", "PUT", f"/api/v1/queue/{Q}/i/{a1}/cancel", 403)
        self.add("bob: DELETE alice's queue item is refused", "bob", "DELETE", f"/api/v1/queue/{Q}/i/{a1}", 403)
        self.add("bob: retry alice's queue item is refused", "bob", "PUT", f"/api/v1/queue/{Q}/retry_items_by_id", 403,
                 body=[a1])
        self.add("bob: GET unknown queue item is 404", "bob", "GET", f"/api/v1/queue/{Q}/i/999999", 404)
        self.add("bob: enqueue a model-free graph", "bob", "POST", f"/api/v1/queue/{Q}/enqueue_batch", 200,
                 body={"batch": {"graph": g_add(20, 22), "runs": 1}, "prepend": False})
        self.add("bob: enqueue a graph reading alice's private image is stopped", "bob", "POST",
                 f"/api/v1/queue/{Q}/enqueue_batch", (200, 403),
                 body={"batch": {"graph": g_blur(self.img("alice_private_1")), "runs": 1}, "prepend": False},
                 after=self.queue_result_not_completed("bob"),
                 note="main refuses at execution time (item fails), the guard at enqueue (403): both close hole 5")
        bpriv = self.images_where(lambda r, i: i["board"] == "alice_private")
        self.add("bob: enqueue a graph saving into alice's private board is stopped", "bob", "POST",
                 f"/api/v1/queue/{Q}/enqueue_batch", (200, 403),
                 body={"batch": {"graph": g_blank(B("alice_private")), "runs": 1}, "prepend": False},
                 after=self.board_unchanged("alice_private", bpriv),
                 note="main refuses at execution time, the guard at enqueue")
        self.add("bob: enqueue a graph reading his own image (and it completes)", "bob", "POST",
                 f"/api/v1/queue/{Q}/enqueue_batch", 200,
                 body={"batch": {"graph": g_blur(self.img("bob_uncat_1")), "runs": 1}, "prepend": False},
                 after=self.queue_result_completed())

        # -- queue ids: a non-admin enqueues only into the shared queue, never into "admin" or another user's id
        def queue_total(qid):
            r = self.upstream().request("GET", f"/api/v1/queue/{qid}/status", ctx.tokens["admin"])
            return ((r.json() or {}).get("queue") or {}).get("total") if r.status == 200 else f"HTTP {r.status}"

        def enqueue_path(qid):
            def path():
                ctx.state[f"qtotal_before_{qid}"] = queue_total(qid)
                return f"/api/v1/queue/{qid}/enqueue_batch"
            return path

        def nothing_enqueued(qid):
            def after(_resp):
                before, now = ctx.state.get(f"qtotal_before_{qid}"), queue_total(qid)
                if not isinstance(now, int):
                    return "fail", f"cannot read the status of queue {qid!r} on InvokeAI ({now})"
                return None if now == before else ("leak", f"queue {qid!r} total went from {before} to {now}")
            return after
        for label, qid in (("'admin'", "admin"), ("'user:<alice id>'", f"user:{self.uid('alice')}")):
            self.add(f"bob: enqueue_batch into queue_id {label} is refused, nothing enqueued", "bob", "POST",
                     enqueue_path(qid), 403, body={"batch": {"graph": g_add(31, 32), "runs": 1}, "prepend": False},
                     after=nothing_enqueued(qid))

        self.gzip_write_cases()
        if self.v612:
            self.multipart_differential_cases()

    def upstream(self) -> Client:
        if self.ctx.up is None:
            raise RuntimeError("this check needs --upstream (InvokeAI's own URL)")
        return self.ctx.up

    # ================================================================== gzip regressions (writes)
    def gzip_write_cases(self):
        ctx = self.ctx
        S = lambda k: ctx.state.get(k) or "missing"  # noqa: E731
        self.add("gzip: alice PUT a thumbnail (multipart) on her workflow created with a gzipped response", "alice",
                 "PUT", lambda: f"/api/v1/workflows/i/{S('wf_gz_alice')}/thumbnail", 200,
                 files=[("image", "t.png", png(16, 16, (5, 150, 250)), "image/png")])

        def preset_intact(_resp):
            r = self.upstream().request("GET", f"/api/v1/style_presets/i/{S('sp_gz_alice')}", ctx.tokens["admin"])
            if r.status != 200:
                return "leak", f"alice's preset is gone (GET on InvokeAI -> {r.status})"
            return None if (r.json() or {}).get("name") == "sp_gz_alice" else (
                "leak", f"alice's preset was renamed to {(r.json() or {}).get('name')!r}")
        pdata = [("data", json.dumps({"name": "pwned", "positive_prompt": "{prompt}", "negative_prompt": "",
                                      "type": "user"}))]
        self.add("gzip: bob PATCH alice's style preset created with a gzipped response is refused", "bob", "PATCH",
                 lambda: f"/api/v1/style_presets/i/{S('sp_gz_alice')}", 403, files=pdata, after=preset_intact)
        self.add("gzip: bob DELETE alice's style preset created with a gzipped response is refused", "bob", "DELETE",
                 lambda: f"/api/v1/style_presets/i/{S('sp_gz_alice')}", 403, after=preset_intact)

    # ================================================================== multipart parser agreement (6.12)
    def multipart_differential_cases(self):
        """bob's type=default style preset in multipart bodies that Starlette reads as `data` (tests/e2e/
        differentials.py shows it, straight against InvokeAI): the guard must see the same `data` or refuse."""
        ctx = self.ctx
        stamp = time.strftime("%H%M%S")

        def no_such_preset(name):
            def after(_resp):
                r = self.upstream().request("GET", "/api/v1/style_presets/", ctx.tokens["admin"])
                if r.status != 200:
                    return "fail", f"cannot list presets on InvokeAI ({r.status})"
                hits = [p for p in r.json() or [] if p.get("name") == name]
                if any(p.get("type") == "default" for p in hits):
                    return "leak", f"bob created the type=default preset {name!r} on InvokeAI"
                return ("leak", f"bob created a preset {name!r} ({hits[0].get('type')})") if hits else None
            return after
        expect = {"a": 400, "b": 400, "c": 403}
        what = {"a": "two boundary parameters (Starlette uses the last)",
                "b": "a part with two name parameters (Starlette uses the last)",
                "c": "FORM-DATA; NAME= in other cases (Starlette ignores case)"}
        for key in ("a", "b", "c"):
            name = f"igdiff-{key}-bob-default-{stamp}"
            data = json.dumps({"name": name, "positive_prompt": "{prompt}", "negative_prompt": "",
                               "type": "default"}).encode()
            ctype, body, _ = ambiguous_multipart(data)[key]
            self.add(f"multipart ({key}): bob's type=default preset with {what[key]} is {expect[key]}", "bob", "POST",
                     "/api/v1/style_presets/", expect[key], data=body, content_type=ctype, after=no_such_preset(name))

    def queue_result_not_completed(self, owner):
        ctx = self.ctx

        def after(resp):
            if resp.status >= 400:
                return None
            ids = (resp.json() or {}).get("item_ids") or []
            deadline = time.time() + 30
            for item_id in ids:
                while True:
                    r = ctx.c.request("GET", f"/api/v1/queue/{Q}/i/{item_id}", ctx.tokens["admin"])
                    st = (r.json() or {}).get("status")
                    if st in ("completed", "failed", "canceled") or time.time() > deadline:
                        break
                    time.sleep(0.3)
                if st == "completed":
                    return "leak", f"queue item {item_id} read another user's image and completed"
            return None
        return after

    def queue_result_completed(self):
        ctx = self.ctx

        def after(resp):
            ids = (resp.json() or {}).get("item_ids") or []
            deadline = time.time() + 30
            for item_id in ids:
                st = None
                while time.time() < deadline:
                    r = ctx.c.request("GET", f"/api/v1/queue/{Q}/i/{item_id}", ctx.tokens["bob"])
                    st = (r.json() or {}).get("status")
                    if st in ("completed", "failed", "canceled"):
                        break
                    time.sleep(0.3)
                if st != "completed":
                    return "false_deny", f"queue item {item_id} ended {st}: {(r.json() or {}).get('error_message')}"
            return None
        return after

    def board_unchanged(self, brole, before: set):
        ctx = self.ctx
        bid = self.board(brole)

        def after(resp):
            if resp.status < 400:
                ids = (resp.json() or {}).get("item_ids") or []
                deadline = time.time() + 30
                for item_id in ids:
                    while time.time() < deadline:
                        r = ctx.c.request("GET", f"/api/v1/queue/{Q}/i/{item_id}", ctx.tokens["admin"])
                        if (r.json() or {}).get("status") in ("completed", "failed", "canceled"):
                            break
                        time.sleep(0.3)
            r = ctx.c.request("GET", f"/api/v1/boards/{bid}/image_names", ctx.tokens["admin"])
            extra = set(r.json() or []) - before - self.ctx.state.get("uploaded_names", set())
            return ("leak", f"new image(s) on {brole}: {sorted(extra)[:3]}") if extra else None
        return after

    # ================================================================== phase 3: sockets (smoke; tests/e2e/sockets.py is the suite)
    def socket_cases(self):
        ctx = self.ctx

        self.add("anon: Socket.IO connection is refused", None, "SOCKET", "/ws/socket.io/", (0,),
                 check=lambda r: socket_anon_check(ctx))
        self.add("bob: socket subscribed to the queue sees no identifying data of alice's items", None, "SOCKET",
                 "/ws/socket.io/", (0,), check=lambda r: socket_foreign_events_check(self))
        self.add("bob: socket receives no model install events (admin-only in main)", None, "SOCKET",
                 "/ws/socket.io/", (0,), check=lambda r: socket_model_events_check(self))
        self.add("bob: queue status never shows the ids of alice's running item", None, "SOCKET",
                 "/api/v1/queue/default/status", (0,), check=lambda r: queue_status_redaction_check(self),
                 note="SOCKET here means a multi-request check; polls status while alice's 40-run batch executes")

    # ================================================================== phase 4: accounts (destructive, last)
    def account_cases(self):
        m, ctx = self.m, self.ctx
        carol = m["users"]["carol"]

        def login_as(key, email, pw):
            def after(resp):
                tok = (resp.json() or {}).get("token")
                if resp.status == 200 and tok:
                    ctx.tokens[key] = tok
                    return None
                return "false_deny", "login failed"
            return self.add(f"carol logs in ({key})", None, "POST", "/api/v1/auth/login", 200,
                            body={"email": email, "password": pw}, after=after)
        login_as("carol_session_a", carol["email"], carol["password"])
        time.sleep(0)  # tokens are minted by the base at call time
        login_as("carol_session_b", carol["email"], carol["password"])

        def keep_refreshed(resp):
            new = resp.header("x-refreshed-token")
            if new:
                ctx.tokens["carol_session_a_refreshed"] = new
            return None
        self.add("carol changes her password (session A)", "carol_session_a", "PATCH", "/api/v1/auth/me", 200,
                 body={"current_password": carol["password"], "new_password": "CarolNewPass456"}, after=keep_refreshed,
                 pre_sleep=1.1)
        self.add("carol's other session (B) is revoked by the password change", "carol_session_b", "GET",
                 "/api/v1/auth/me", 401)
        self.add("carol's old password no longer logs in", None, "POST", "/api/v1/auth/login", 401,
                 body={"email": carol["email"], "password": carol["password"]})
        self.add("carol's new password logs in", None, "POST", "/api/v1/auth/login", 200,
                 body={"email": carol["email"], "password": "CarolNewPass456"})

        # system user protection (hole 8)
        self.add("admin: PATCH system user with a password is refused", "admin", "PATCH", "/api/v1/auth/users/system",
                 400, body={"password": "SystemPass123"})
        self.add("admin: promoting the system user is refused", "admin", "PATCH", "/api/v1/auth/users/system", 400,
                 body={"is_admin": True})
        self.add("admin: deactivating the system user is refused", "admin", "PATCH", "/api/v1/auth/users/system", 400,
                 body={"is_active": False})
        self.add("admin: renaming a normal user works", "admin", "PATCH", f"/api/v1/auth/users/{self.uid('bob')}", 200,
                 body={"display_name": "Bobby"})
        self.add("admin: DELETE the system user is refused", "admin", "DELETE", "/api/v1/auth/users/system", 400)
        # last-admin guard (hole 9): erin is demoted, admin is the only active admin
        self.add("admin: demoting the last admin is refused", "admin", "PATCH",
                 f"/api/v1/auth/users/{self.uid('admin')}", 400, body={"is_admin": False})
        self.add("admin: deactivating the last admin is refused", "admin", "PATCH",
                 f"/api/v1/auth/users/{self.uid('admin')}", 400, body={"is_active": False})
        self.add("anon: /auth/setup stays closed", None, "POST", "/api/v1/auth/setup", 400,
                 body={"email": "mallory@example.com", "display_name": "M", "password": "MalloryPass123"})
        self.add("admin: DELETE the last admin is refused", "admin", "DELETE", f"/api/v1/auth/users/{self.uid('admin')}",
                 400)
        self.boolean_cases()

    # ================================================================== booleans as pydantic reads them (last)
    def system_user_id(self) -> str | None:
        cl, tok = self.ctx.up or self.ctx.c, self.ctx.tokens["admin"]
        r = cl.request("GET", "/api/v1/auth/users", tok)
        for u in (r.json() or []) if r.status == 200 else []:
            if isinstance(u, dict) and (u.get("user_id") == "system" or str(u.get("email", "")).startswith("system@")):
                return u["user_id"]
        return "system" if cl.request("GET", "/api/v1/auth/users/system", tok).status == 200 else None

    def boolean_cases(self):
        """Strings that pydantic (lax mode) turns into booleans: "true", "off". These run last: a leak here can
        promote `system` (undone below) or deactivate the only admin (nothing runs after it)."""
        ctx = self.ctx
        sys_id = self.system_user_id()
        if sys_id:
            def system_not_admin(_resp):
                cl = self.upstream()
                r = cl.request("GET", f"/api/v1/auth/users/{sys_id}", ctx.tokens["admin"])
                if r.status == 200 and (r.json() or {}).get("is_admin"):
                    cl.request("PATCH", f"/api/v1/auth/users/{sys_id}", ctx.tokens["admin"],
                               json_body={"is_admin": False})  # undo, so the last-admin case below still holds
                    return "leak", "the system user became an admin (undone)"
                return None
            self.add('admin: PATCH the system user with is_admin "true" (a string pydantic reads as true) is 400',
                     "admin", "PATCH", f"/api/v1/auth/users/{sys_id}", 400, body={"is_admin": "true"},
                     after=system_not_admin)
        else:
            self.notes.append('case "admin: PATCH the system user with is_admin \"true\"" not added: '
                              f"InvokeAI {self.version} lists no system user")
        me = self.uid("admin")
        self.add('admin: PATCH himself with is_active "maybe" (no boolean) is 422', "admin", "PATCH",
                 f"/api/v1/auth/users/{me}", 422, body={"is_active": "maybe"})

        def not_single_admin():
            r = self.upstream().request("GET", "/api/v1/auth/users", ctx.tokens["admin"])
            if r.status != 200:
                return f"cannot list users on InvokeAI ({r.status})"
            act = [u for u in r.json() or [] if u.get("is_admin") and u.get("is_active") and u.get("user_id") != "system"]
            if [u.get("user_id") for u in act] != [me]:
                return f"needs admin as the only active admin; active admins now: {[u.get('email') for u in act]}"
            return None
        self.add('admin (the last active admin): deactivating himself with is_active "off" is 400', "admin", "PATCH",
                 f"/api/v1/auth/users/{me}", 400, body={"is_active": "off"}, skip_if=not_single_admin)

    def wide_destructive_cases(self):
        """Calls that, when they leak on 6.12, wipe other users' data: after everything that needs that data."""
        ctx = self.ctx
        inter = self.img("alice_intermediate")

        def alice_intermediate_survives(_resp):
            r = ctx.c.request("GET", f"/api/v1/images/i/{inter}", ctx.tokens["alice"])
            return None if r.status == 200 else ("leak", "alice's intermediate image was deleted")
        self.add("anon: DELETE images/intermediates needs a login", None, "DELETE", "/api/v1/images/intermediates", 401,
                 after=alice_intermediate_survives)
        self.add("bob (non-admin): DELETE images/intermediates is admin-only", "bob", "DELETE",
                 "/api/v1/images/intermediates", 403, after=alice_intermediate_survives)
        uncat = self.img("alice_uncat_1")

        def alice_uncat1_survives(_resp):
            r = ctx.c.request("GET", f"/api/v1/images/i/{uncat}", ctx.tokens["alice"])
            return None if r.status == 200 else ("leak", "alice's uncategorized image was deleted")
        self.add("anon: DELETE images/uncategorized needs a login", None, "DELETE", "/api/v1/images/uncategorized", 401,
                 after=alice_uncat1_survives)
        alice_uncat = self.img("alice_uncat_2")

        def alice_uncat_survives(_resp):
            r = ctx.c.request("GET", f"/api/v1/images/i/{alice_uncat}", ctx.tokens["alice"])
            return None if r.status == 200 else ("leak", f"bob's DELETE /images/uncategorized removed alice's image")
        self.add("bob: DELETE /images/uncategorized deletes only his own", "bob", "DELETE", "/api/v1/images/uncategorized",
                 (200, 403) if self.v612 else 200, after=alice_uncat_survives, note=STRICTER_612 if self.v612 else "")

    # ================================================================== run
    def build(self):
        self.setup_cases()
        self.read_cases()
        self.write_cases()
        self.wide_destructive_cases()
        self.socket_cases()
        self.account_cases()
        return self.cases


# ============================================================================ graphs and bodies
def g_add(a, b):
    return {"id": f"e2e-add-{a}-{b}-{time.time_ns()}", "edges": [], "nodes": {
        "add1": {"id": "add1", "type": "add", "a": a, "b": b, "is_intermediate": True, "use_cache": False}}}


def g_blur(image_name):
    return {"id": f"e2e-blur-{time.time_ns()}", "edges": [], "nodes": {
        "blur1": {"id": "blur1", "type": "img_blur", "image": {"image_name": image_name}, "radius": 1,
                  "blur_type": "gaussian", "is_intermediate": True, "use_cache": False}}}


def g_blank(board_id):
    return {"id": f"e2e-blank-{time.time_ns()}", "edges": [], "nodes": {
        "blank1": {"id": "blank1", "type": "blank_image", "width": 8, "height": 8, "mode": "RGB",
                   "color": {"r": 1, "g": 2, "b": 3, "a": 255}, "board": {"board_id": board_id},
                   "is_intermediate": False, "use_cache": False}}}


def recall_body(image_name):
    return {"positive_prompt": "e2e", "control_layers": [{"model_name": "e2e-no-such-model", "image_name": image_name}]}


# ============================================================================ Socket.IO over Engine.IO polling (stdlib)
class PollingSocket:
    """Minimal Engine.IO v4 polling client, enough to connect, emit and collect events.

    After CONNECT a reader thread keeps exactly one long-poll GET open (as real clients do) and close()
    sends the close packet, which ends that GET; no request is ever abandoned half-way (InvokeAI's
    graceful shutdown would wait for it)."""

    def __init__(self, c: Client, token: str | None, path="/ws/socket.io/", accept_encoding: str | None = None):
        self.c, self.token, self.path = c, token, path
        # None = the client's browser-like default (gzip). --direct passes "identity": InvokeAI 6.14.2 answers 500
        # to Engine.IO polling that accepts gzip (the guard drops Accept-Encoding on socket requests itself).
        self.headers = {"Accept-Encoding": accept_encoding} if accept_encoding else None
        self.sid = None
        self.events: list = []
        self.connected = False
        self.refused = ""
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._jar = http.cookiejar.CookieJar()  # one cookie jar per socket, as a browser tab keeps them

    def _q(self):
        p = {"EIO": "4", "transport": "polling", "t": str(time.time_ns())}
        if self.sid:
            p["sid"] = self.sid
        return p

    def _post(self, payload: bytes):
        return Client(self.c.base, timeout=10, cookie_jar=self._jar).request(
            "POST", self.path, self.token, params=self._q(), data=payload, content_type="text/plain;charset=UTF-8", headers=self.headers)

    def _get(self):
        return Client(self.c.base, timeout=70, cookie_jar=self._jar).request(
            "GET", self.path, self.token, params=self._q(), headers=self.headers)

    def _handle(self, text: str) -> list[str]:
        out = []
        for p in text.split("\x1e"):
            if p == "2":  # ping -> pong
                self._post(b"3")
                continue
            if p.startswith("42"):
                try:
                    with self._lock:
                        self.events.append(json.loads(p[2:]))
                except ValueError:
                    pass
            if p == "1":
                self._stop.set()
            out.append(p)
        return out

    def open(self) -> bool:
        r = self._get()
        if r.status != 200 or not r.text.startswith("0"):
            self.refused = f"handshake HTTP {r.status}"
            return False
        self.sid = json.loads(r.text[1:])["sid"]
        auth = json.dumps({"token": self.token}) if self.token else ""
        r = self._post(f"40{auth}".encode())
        if r.status != 200:
            self.refused = f"CONNECT HTTP {r.status}"
            return False
        r = self._get()  # the CONNECT answer is queued already: this returns at once
        for pkt in self._handle(r.text if r.status == 200 else ""):
            if pkt.startswith("40"):
                self.connected = True
            elif pkt.startswith("44"):
                self.refused = f"CONNECT refused: {pkt[2:120]}"
        if r.status != 200:
            self.refused = f"poll HTTP {r.status}"
        if self.connected:
            self._reader = threading.Thread(target=self._read_loop, daemon=True)
            self._reader.start()
        return self.connected

    def _read_loop(self):
        while not self._stop.is_set():
            try:
                r = self._get()
            except Exception:  # noqa: BLE001
                break
            if r.status != 200:
                break
            self._handle(r.text)

    def emit(self, event, data):
        self._post(("42" + json.dumps([event, data])).encode())

    def wait(self, seconds: float):
        self._stop.wait(seconds)

    def close(self):
        self._stop.set()
        if self._reader and self._reader.is_alive():
            # Make the server answer the pending long-poll GET now: an event with an ack id gets an ACK
            # packet back, the reader sees the stop flag and issues no further GET.
            try:
                self._post(b'4299["subscribe_queue",{"queue_id":"default"}]')
            except Exception:  # noqa: BLE001
                pass
            self._reader.join(timeout=30)
        if self.sid:
            try:
                self._post(b"1")
            except Exception:  # noqa: BLE001
                pass


def socket_ae(ctx: Ctx) -> str | None:
    """Accept-Encoding of the polling socket: browser-like through the guard, identity straight to InvokeAI."""
    return "identity" if ctx.direct else None


def socket_anon_check(ctx: Ctx):
    s = PollingSocket(Client(ctx.c.base, timeout=10), None, accept_encoding=socket_ae(ctx))
    try:
        if s.open():
            return "leak", "an anonymous Socket.IO client was accepted"
        return None
    finally:
        s.close()


def socket_foreign_events_check(mx: Matrix):
    ctx = mx.ctx
    s = PollingSocket(Client(ctx.c.base, timeout=10), ctx.tokens["bob"], accept_encoding=socket_ae(ctx))
    try:
        if not s.open():
            return "false_deny", f"bob's socket could not connect: {s.refused}"
        s.emit("subscribe_queue", {"queue_id": Q})
        s.wait(1.0)
        r = ctx.c.request("POST", f"/api/v1/queue/{Q}/enqueue_batch", ctx.tokens["alice"],
                          json_body={"batch": {"graph": g_add(40, 2), "runs": 1}, "prepend": False})
        if r.status != 200:
            return "fail", f"alice could not enqueue ({r.status})"
        batch_id = r.json()["batch"]["batch_id"]
        markers = {batch_id, mx.uid("alice"), mx.m["users"]["alice"]["email"]}
        s.wait(6.0)
        with s._lock:
            seen = [e for e in s.events if isinstance(e, list) and e]
        ctx.state["socket_events_bob"] = [e[0] for e in seen]
        bad = [e[0] for e in seen if any(mk in json.dumps(e) for mk in markers)]
        if bad:
            return "leak", f"bob received alice's identifying data in events {sorted(set(bad))}"
        return None
    finally:
        s.close()


def socket_model_events_check(mx: Matrix):
    ctx = mx.ctx
    s = PollingSocket(Client(ctx.c.base, timeout=10), ctx.tokens["bob"], accept_encoding=socket_ae(ctx))
    try:
        if not s.open():
            return "false_deny", f"bob's socket could not connect: {s.refused}"
        s.emit("subscribe_queue", {"queue_id": Q})
        s.wait(1.0)
        # a download from a closed loopback port: the install job starts and fails at once, which emits
        # model_install_error / download_error events (never leaves 127.0.0.1)
        r = ctx.c.request("POST", "/api/v2/models/install", ctx.tokens["admin"],
                          params={"source": "http://127.0.0.1:9/invoke-guard-e2e.safetensors", "inplace": "true"},
                          json_body={})
        if r.status >= 300:
            return "fail", f"admin could not start a model install ({r.status} {r.detail()})"
        s.wait(4.0)
        with s._lock:
            names = sorted({e[0] for e in s.events if isinstance(e, list) and e and isinstance(e[0], str)})
        ctx.state["socket_model_events_bob"] = names
        bad = [n for n in names if n.startswith(("model_install", "download_", "model_load"))]
        return ("leak", f"bob received {bad}") if bad else None
    finally:
        s.close()


def queue_status_redaction_check(mx: Matrix):
    ctx = mx.ctx
    r = ctx.c.request("POST", f"/api/v1/queue/{Q}/enqueue_batch", ctx.tokens["alice"],
                      json_body={"batch": {"graph": g_add(7, 7), "runs": 40}, "prepend": False})
    if r.status != 200:
        return "fail", f"alice could not enqueue ({r.status})"
    j = r.json()
    alice_ids, batch_id = set(j.get("item_ids") or []), j["batch"]["batch_id"]
    seen_running = 0
    deadline = time.time() + 20
    while time.time() < deadline:
        st = ctx.c.request("GET", f"/api/v1/queue/{Q}/status", ctx.tokens["bob"])
        if st.status != 200:
            return "false_deny", f"bob's GET status -> {st.status}"
        q = (st.json() or {}).get("queue") or {}
        if q.get("in_progress"):
            seen_running += 1
        if q.get("item_id") in alice_ids or q.get("batch_id") == batch_id:
            return "leak", f"bob sees alice's running item {q.get('item_id')} / batch {q.get('batch_id')}"
        if not q.get("pending") and not q.get("in_progress"):
            break
        time.sleep(0.02)
    ctx.state["status_polls_with_running_item"] = seen_running
    if not seen_running:
        return "fail", "inconclusive: bob's status polls never saw an item in progress"
    return None


# ============================================================================ runner
def run_case(ctx: Ctx, c: Case) -> None:
    t0 = time.time()
    try:
        _run_case(ctx, c)
    except Exception as e:  # noqa: BLE001
        c.outcome, c.message = "fail", f"exception: {type(e).__name__}: {e}"
    c.seconds = time.time() - t0
    if c.xfail and c.outcome != "skip":
        c.outcome = "xpass" if c.outcome == "pass" else "xfail"


def _run_case(ctx: Ctx, c: Case) -> None:
    if c.skip_if:
        why = c.skip_if()
        if why:
            c.outcome, c.message = "skip", why
            return
    if getattr(c, "pre_sleep", 0):
        time.sleep(c.pre_sleep)
    if c.method in ("SOCKET", "MULTI"):  # multi-request checks: check(None) does the calls
        res = c.check(None)
        c.status = 0
        c.outcome, c.message = ("pass", "") if res is None else res
        return
    val = lambda x: x() if callable(x) else x  # noqa: E731
    path = val(c.path)
    token = val(c.token) if c.token is not None else (ctx.tokens.get(c.who) if c.who else None)
    if c.who and token is None:
        c.outcome, c.message = "fail", f"no token for {c.who} (an earlier step failed)"
        return
    kw = dict(params=val(c.params), headers=c.headers, cookies=val(c.cookies))
    if c.files is not None:
        kw["files"] = val(c.files)
    elif c.data is not None:
        kw["data"], kw["content_type"] = val(c.data), c.content_type
    elif c.body is not None:
        kw["json_body"] = val(c.body)
    # A browser-like client with a cookie jar only where the case simulates the browser; everything else
    # (in particular every "no credentials" case) uses the shared client, which never keeps cookies.
    client = ctx.browser(c.client) if c.client else ctx.c
    assert client is not ctx.c or ctx.c.jar is None, "the shared client must stay cookie-less"
    r = client.request(c.method, path, token, **kw)
    if c.note.startswith("retried") and r.status == 404:
        deadline = time.time() + (20 if "20 s" in c.note else 10)
        while r.status == 404 and time.time() < deadline:
            time.sleep(0.5)
            r = client.request(c.method, path, token, **kw)
    c.content_encoding = ", ".join(r.headers.get("content-encoding", []))
    if path.startswith("/api/") and r.status == 200 and (r.header("content-type") or "").startswith("text/html"):
        # InvokeAI serves its web UI for unknown GET paths: for an API path that means "no such route"
        r.status = 404
    c.status = r.status
    if r.status in c.expect:
        res = c.check(r) if c.check else None
        if res is None and c.after:
            res = c.after(r)
        c.outcome, c.message = ("pass", "") if res is None else res
        return
    deny_expected = is_deny_expected(c.expect)
    if deny_expected and r.status < 400:
        c.outcome = "leak"
        c.message = f"expected {c.expect}, got {r.status}"
        if c.after:
            c.after(r)
    elif not deny_expected and r.status in DENY and not any(s in DENY for s in c.expect):
        c.outcome = "false_deny"
        c.message = f"expected {c.expect}, got {r.status} {r.detail()[:100]}"
    else:
        c.outcome = "fail"
        c.message = f"expected {c.expect}, got {r.status} {r.detail()[:100]}"
    if c.after and c.outcome != "leak":
        res = c.after(r)
        if res and res[0] == "leak":
            c.outcome, c.message = "leak", c.message + "; " + res[1]


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--base", required=True, help="guard URL (or InvokeAI's with --direct)")
    ap.add_argument("--direct", action="store_true", help="the base is InvokeAI itself (measures upstream leaks)")
    ap.add_argument("--upstream", help="InvokeAI's own URL, for follow-up checks that bypass the guard "
                                       "(default: --base with --direct; without it those checks fail)")
    ap.add_argument("-k", "--only", help="run only cases whose name matches this glob")
    ap.add_argument("--report", help="write a JSON report of every case here")
    ap.add_argument("--verbose", "-v", action="store_true", help="print passing cases too")
    ap.add_argument("--out", help="also write everything printed to this file")
    a = ap.parse_args()

    if a.out:
        sys.stdout = _Tee(sys.stdout, open(a.out, "w", encoding="utf-8"))
    m = json.loads(Path(a.manifest).read_text())
    upstream = a.upstream or (a.base if a.direct else None)
    # The shared client is deliberately cookie-less (cookie_jar=False): it carries the "no credentials" cases, which
    # must not send a cookie some earlier login set; cases that simulate the browser use ctx.browser(), which keeps
    # cookies. The follow-up client talks Bearer to InvokeAI itself and must not depend on earlier cases either.
    ctx = Ctx(m=m, c=Client(a.base, timeout=60, cookie_jar=False), direct=a.direct, tokens=dict(m["tokens"]),
              up=Client(upstream, timeout=60, cookie_jar=False) if upstream else None)
    mx = Matrix(ctx)
    cases = mx.build()
    if a.only:
        keep = [c for c in cases if fnmatch.fnmatch(c.name, a.only) or c.name.startswith("setup:")]
        cases = keep
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        print(f"duplicate case names: {sorted(dupes)}", file=sys.stderr)
        return 2
    target = "InvokeAI directly (--direct)" if a.direct else "the guard"
    print(f"matrix: InvokeAI {mx.version}, {len(cases)} cases through {target} at {a.base}", flush=True)
    t0 = time.time()
    for note in mx.notes:
        print(f"note: {note}", flush=True)
    for c in cases:
        run_case(ctx, c)
        if a.verbose or c.outcome not in ("pass", "xfail"):
            tag = {"pass": "ok", "leak": "LEAK", "false_deny": "FALSE_DENY", "fail": "FAIL", "xfail": "xfail",
                   "xpass": "XPASS", "skip": "skip"}[c.outcome]
            extra = f"  [{c.xfail}]" if c.xfail and c.outcome == "xpass" else ""
            print(f"{tag:10} {c.status:3} {c.method:6} {c.name}{(' — ' + c.message) if c.message else ''}{extra}",
                  flush=True)
    counted = [c for c in cases if not c.xfail and c.outcome != "skip"]
    skipped = sum(c.outcome == "skip" for c in cases)
    n_pass = sum(c.outcome == "pass" for c in counted)
    leaks = sum(c.outcome == "leak" for c in counted)
    fdeny = sum(c.outcome == "false_deny" for c in counted)
    fails = sum(c.outcome == "fail" for c in counted)
    xf = sum(c.outcome == "xfail" for c in cases)
    xp = sum(c.outcome == "xpass" for c in cases)
    if a.report:
        Path(a.report).write_text(json.dumps({
            "invokeai_version": mx.version, "base": a.base, "direct": a.direct, "seconds": round(time.time() - t0, 1),
            "observations": {k: v for k, v in ctx.state.items() if k.startswith(("socket_", "status_", "gzip_"))},
            "client_codings": dict(ctx.c.codings), "notes": mx.notes,
            "cases": [{"name": c.name, "who": c.who, "method": c.method, "expect": list(c.expect), "status": c.status,
                       "outcome": c.outcome, "message": c.message, "xfail": c.xfail, "note": c.note,
                       "content_encoding": c.content_encoding} for c in cases],
        }, indent=1))
    coded = ", ".join(f"{k} {v}" for k, v in sorted(ctx.c.codings.items())) or "none"
    print(f"InvokeAI {mx.version} via {'upstream (direct)' if a.direct else 'guard'}: "
          f"{len(cases)} cases in {time.time() - t0:.1f}s; other failures={fails} xfail={xf} xpass={xp} "
          f"skipped={skipped}; compressed responses decoded: {coded}")
    print(f"PASS {n_pass}/{len(counted)} leaks={leaks} false_denies={fdeny} (InvokeAI {mx.version} matrix)")
    return 0 if n_pass == len(counted) else 1


if __name__ == "__main__":
    sys.exit(main())
