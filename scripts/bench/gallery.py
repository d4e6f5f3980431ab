#!/usr/bin/env python3
"""A 10 000-image gallery on a real InvokeAI, guard vs direct (docs/benchmarks.md, "Lists").

    python3 scripts/bench/gallery.py --direct URL --guard URL [--images 10000] [--requests 200]

On a FRESH multiuser InvokeAI: creates an admin, bob and carol, uploads --images small PNGs as bob
(and 200 as carol, so every filter has foreign items to drop), then times, for each request the
guard recomputes or filters on an old InvokeAI, --requests sequential calls as bob directly and
through the guard (interleaved, same client settings: gzip on, like a browser), and prints the p50
and p90 latencies and the guard/direct p50 ratio. Every guard answer is checked: status 200, and no
carol image in it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))
from igclient import Client, png  # noqa: E402

PASSWORDS = {"admin": "AdminPass123", "bob": "BobPass1234", "carol": "CarolPass123"}


def must(resp, what):
    if resp.status not in (200, 201):
        raise SystemExit(f"gallery: {what} -> {resp.status} {resp.body[:200]!r}")
    return resp.json()


def setup(direct: Client, n_bob: int, n_carol: int) -> dict[str, str]:
    must(direct.request("POST", "/api/v1/auth/setup", json_body={
        "email": "admin@example.com", "display_name": "Admin", "password": PASSWORDS["admin"]}), "setup")
    tokens = {"admin": must(direct.request("POST", "/api/v1/auth/login", json_body={
        "email": "admin@example.com", "password": PASSWORDS["admin"], "remember_me": False}), "login")["token"]}
    for who in ("bob", "carol"):
        must(direct.request("POST", "/api/v1/auth/users", tokens["admin"], json_body={
            "email": f"{who}@example.com", "display_name": who, "password": PASSWORDS[who], "is_admin": False}),
            f"create {who}")
        tokens[who] = must(direct.request("POST", "/api/v1/auth/login", json_body={
            "email": f"{who}@example.com", "password": PASSWORDS[who], "remember_me": False}), "login")["token"]
    data = png(8, 8, (10, 200, 30))

    def upload(who):
        return must(direct.request("POST", "/api/v1/images/upload", tokens[who],
                                   params={"image_category": "general", "is_intermediate": "false"},
                                   files=[("file", "g.png", data, "image/png")]), "upload")["image_name"]
    t = time.time()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upload, ["bob"] * n_bob + ["carol"] * n_carol))
    print(f"uploaded {n_bob} images as bob and {n_carol} as carol in {time.time() - t:.0f}s", flush=True)
    return tokens


def timed(client: Client, method, path, token, **kw):
    t = time.perf_counter()
    r = client.request(method, path, token, **kw)
    return (time.perf_counter() - t) * 1000, r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--direct", required=True)
    ap.add_argument("--guard", required=True)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    a = ap.parse_args()
    direct, guard = Client(a.direct, timeout=120), Client(a.guard, timeout=120)
    tokens = setup(direct, a.images, 200)
    bob = tokens["bob"]
    carol_names = set(must(direct.request("GET", "/api/v1/images/names", tokens["carol"],
                                          params={"board_id": "none"}), "carol names")["image_names"])
    page = must(direct.request("GET", "/api/v1/images/", bob, params={"board_id": "none", "limit": 50}),
                "page")["items"]
    fifty = [i["image_name"] for i in page]
    cases = [
        ("gallery page GET /images/?board_id=none&limit=50 (passed through)", "GET", "/api/v1/images/",
         {"params": {"board_id": "none", "limit": 50}}, lambda j: [i["image_name"] for i in j["items"]]),
        ("GET /images/?limit=50 without board_id (own page: DB + images_by_names)", "GET", "/api/v1/images/",
         {"params": {"limit": 50, "offset": 100}}, lambda j: [i["image_name"] for i in j["items"]]),
        ("GET /images/names without board_id (own names, recounted)", "GET", "/api/v1/images/names",
         {}, lambda j: j["image_names"]),
        ("POST /images/images_by_names, 50 names (readable only)", "POST", "/api/v1/images/images_by_names",
         {"json_body": {"image_names": fifty + sorted(carol_names)[:5]}}, lambda j: [i["image_name"] for i in j]),
    ]
    print(f"{'request':74} {'direct p50':>10} {'guard p50':>10} {'ratio':>6} {'direct p90':>10} {'guard p90':>10}")
    worst = 0.0
    for label, method, path, kw, names in cases:
        d, g = [], []
        for _ in range(a.requests):
            ms, _r = timed(direct, method, path, bob, **kw)
            d.append(ms)
            ms, r = timed(guard, method, path, bob, **kw)
            g.append(ms)
            if r.status != 200:
                raise SystemExit(f"gallery: {label} through the guard -> {r.status} {r.body[:200]!r}")
            leaked = set(names(r.json())) & carol_names
            if leaked:
                raise SystemExit(f"gallery: LEAK {label}: carol's {sorted(leaked)[:3]}")
        p = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1]  # noqa: E731
        ratio = statistics.median(g) / statistics.median(d)
        worst = max(worst, ratio)
        print(f"{label:74} {statistics.median(d):9.1f}ms {statistics.median(g):9.1f}ms {ratio:6.2f} "
              f"{p(d, 90):9.1f}ms {p(g, 90):9.1f}ms", flush=True)
    print(f"worst p50 ratio guard/direct: {worst:.2f} (target <= 1.5); 0 leaks in {len(cases) * a.requests} answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
