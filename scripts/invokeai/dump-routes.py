#!/usr/bin/env python3
"""Print the route list of a running InvokeAI from its /openapi.json: `METHOD<TAB>PATH`, sorted.

    python3 scripts/invokeai/dump-routes.py http://127.0.0.1:PORT > tests/data/openapi/invokeai-VERSION.paths.tsv

HEAD lines appear only where the OpenAPI document declares them. Stdlib only.
"""
import gzip
import json
import sys
import urllib.request

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    # browser-like: gzip accepted (openapi.json is well above InvokeAI's gzip threshold) and decoded
    req = urllib.request.Request(sys.argv[1].rstrip("/") + "/openapi.json", headers={"Accept-Encoding": "gzip, deflate, br"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
        if r.headers.get("Content-Encoding") not in (None, "", "identity", "gzip"):
            raise SystemExit(f"unexpected Content-Encoding {r.headers.get('Content-Encoding')}")
        doc = json.loads(gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" else raw)
    rows = sorted({(m.upper(), path) for path, ops in doc.get("paths", {}).items() for m in ops if m in METHODS},
                  key=lambda t: (t[1], t[0]))
    if not rows:
        print("no paths in openapi.json", file=sys.stderr)
        return 1
    sys.stdout.write("".join(f"{m}\t{p}\n" for m, p in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
