#!/usr/bin/env python3
"""Prepare (or tidy up after) the web UI's model-access and quota check, talking to InvokeAI directly.

    python models_setup.py --base http://127.0.0.1:UPORT --manifest manifest.json --workdir DIR --out models.json
    python models_setup.py --base ... --manifest manifest.json --teardown

Installs the tiny models of tests/e2e/models.py through InvokeAI's own install API (an SD 1.5 main model, an SDXL
main model, a VAE and two LoRAs), creates dana (group interns in models-groups.toml: no SDXL, no detail LoRA, one
queued item at most), pauses the queue processor (nothing runs; items stay queued) and clears the queue; writes
dana's credentials and the installed model names. --teardown clears the queue and resumes the processor.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from igclient import Client  # noqa: E402
from models import FILES, safetensors  # noqa: E402

DANA = ("dana@example.com", "Dana", "DanaPass1234")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--out")
    ap.add_argument("--teardown", action="store_true")
    a = ap.parse_args()
    m = json.loads(Path(a.manifest).read_text())
    c = Client(a.base, cookie_jar=False)  # acts as admin by Bearer token only
    admin = m["users"]["admin"]
    r = c.request("POST", "/api/v1/auth/login", json_body={"email": admin["email"], "password": admin["password"]})
    if r.status != 200:
        print(f"models_setup: admin login {r.status} {r.detail()}", file=sys.stderr)
        return 2
    tok = r.json()["token"]
    if a.teardown:
        c.request("PUT", "/api/v1/queue/default/clear", tok)
        c.request("PUT", "/api/v1/queue/default/processor/resume", tok)
        return 0
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    seed = time.time_ns() % 100000
    for name, tensors in FILES.items():
        path = work / f"{name}.safetensors"
        path.write_bytes(safetensors(tensors, seed))
        r = c.request("POST", "/api/v2/models/install", tok, params={"source": str(path), "inplace": "true"}, json_body={})
        if r.status not in (200, 201):
            print(f"models_setup: install {name}: {r.status} {r.detail()}", file=sys.stderr)
            return 2
    deadline, names = time.time() + 120, set()
    while time.time() < deadline:
        names = {x["name"] for x in (c.request("GET", "/api/v2/models/", tok).json() or {}).get("models", [])}
        if set(FILES) <= names:
            break
        time.sleep(0.5)
    if not set(FILES) <= names:
        print(f"models_setup: installed only {sorted(names)}", file=sys.stderr)
        return 2
    email, name, pw = DANA
    r = c.request("POST", "/api/v1/auth/users", tok, json_body={"email": email, "display_name": name, "password": pw,
                                                              "is_admin": False})
    if r.status not in (200, 201):
        print(f"models_setup: create dana: {r.status} {r.detail()}", file=sys.stderr)
        return 2
    for path in ("/api/v1/queue/default/processor/pause", "/api/v1/queue/default/clear"):
        r = c.request("PUT", path, tok)
        if r.status != 200:
            print(f"models_setup: {path}: {r.status} {r.detail()}", file=sys.stderr)
            return 2
    Path(a.out).write_text(json.dumps({
        "user": {"email": email, "password": pw},
        "allowed_main": "tiny-main-sd15", "restricted_main": "tiny-main-sdxl",
        "allowed_lora": "tiny-lora-style", "restricted_lora": "tiny-lora-detail",
        "models": sorted(FILES),
    }, indent=1))
    print(f"models_setup: {len(FILES)} models installed, dana created, processor paused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
