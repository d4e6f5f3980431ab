#!/usr/bin/env python3
"""Evidence, not a test: how InvokeAI itself (Starlette + python-multipart) reads ambiguous multipart bodies.

    python3 tests/e2e/differentials.py --base http://127.0.0.1:INVOKEAI_PORT --manifest manifest.json [--out F.json]

Talks to InvokeAI DIRECTLY (never through the guard). tests/e2e/run.sh runs it in --direct mode, after the
scenario and before the matrix (output: differentials.out / differentials.json in the run dir); it can be run
by hand against any server the scenario built. The matrix's "multipart (a|b|c)" cases send the same three
bodies THROUGH the guard (6.12) and expect 400, 400, 403: the guard must either read the same `data` part as
Starlette (and then refuse bob's type=default preset, 403) or refuse the ambiguous body (400).

For each body of igclient.ambiguous_multipart (a: two boundary parameters, b: a part with two name parameters,
c: FORM-DATA; NAME= in other cases) bob POSTs /api/v1/style_presets/ twice:
  type "user"     a control: 200 and a preset named as in `data` means Starlette read the `data` part;
                  422 ("data" missing) means it did not.
  type "default"  the attack: 200 (6.12, which has no type check) means bob created a default preset; 403
                  (6.14+/main refuses non-admins) also shows the `data` part was read and its type seen.
Every preset created here is deleted again as admin. Prints one line per request and a summary; exit status 0
unless the server could not be reached (2).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from igclient import Client, ambiguous_multipart  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="InvokeAI's URL (direct, not the guard)")
    ap.add_argument("--manifest", required=True, help="manifest.json of scenario.py (tokens of bob and admin)")
    ap.add_argument("--out", help="write the findings as JSON here")
    a = ap.parse_args()
    m = json.loads(Path(a.manifest).read_text())
    bob, admin = m["tokens"]["bob"], m["tokens"]["admin"]
    # Gzip like a browser; no cookie jar: raw protocol evidence sent as bob and admin by Bearer token only.
    c = Client(a.base, timeout=30, cookie_jar=False)
    try:
        ver = c.request("GET", "/api/v1/app/version").json()["version"]
    except Exception as e:  # noqa: BLE001
        print(f"differentials: cannot reach {a.base}: {e}", file=sys.stderr)
        return 2
    print(f"differentials: InvokeAI {ver} at {a.base} (direct), bob POST /api/v1/style_presets/")
    stamp = time.strftime("%H%M%S")
    findings = []
    for key in ("a", "b", "c"):
        for ptype in ("user", "default"):
            name = f"igdiff-direct-{key}-{ptype}-{stamp}"
            data = json.dumps({"name": name, "positive_prompt": "{prompt}", "negative_prompt": "",
                               "type": ptype}).encode()
            ctype, body, desc = ambiguous_multipart(data)[key]
            r = c.request("POST", "/api/v1/style_presets/", bob, data=body, content_type=ctype)
            j = r.json() if r.status == 200 else None
            created = isinstance(j, dict) and j.get("name") == name
            if created:
                verdict = f"read `data` and CREATED a type={j.get('type')} preset as bob"
            elif r.status == 403:
                verdict = "read `data` (type=default seen) and refused it (403)"
            elif r.status == 422:
                verdict = "did NOT find `data` (422)"
            elif r.status == 400:
                verdict = "refused the multipart body (400)"
            else:
                verdict = f"answered {r.status}"
            read = created or r.status == 403
            findings.append({"body": key, "description": desc, "type": ptype, "status": r.status,
                             "detail": r.detail() if r.status != 200 else "", "starlette_read_data": read,
                             "created_type": j.get("type") if created else None, "verdict": verdict})
            print(f"  ({key}) type={ptype:7} {desc}: HTTP {r.status}: Starlette {verdict}"
                  f"{'' if r.status == 200 else ' — ' + r.detail()[:120]}")
            if created:  # clean up (admin, directly)
                d = c.request("DELETE", f"/api/v1/style_presets/i/{j['id']}", admin)
                if d.status != 200:
                    print(f"      note: could not delete preset {j['id']} ({d.status})")
    summary = {k: any(f["starlette_read_data"] for f in findings if f["body"] == k) for k in ("a", "b", "c")}
    print("differentials: Starlette reads the `data` part in: "
          + ", ".join(f"({k}) {'yes' if v else 'no'}" for k, v in summary.items()))
    if a.out:
        Path(a.out).write_text(json.dumps({"invokeai_version": ver, "base": a.base, "findings": findings,
                                           "starlette_reads_data": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
