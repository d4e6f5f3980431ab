#!/usr/bin/env python3
"""Write the committed seed corpora of the fuzz targets from the project's test data.

    python3 fuzz/seeds.py          (idempotent; names are stable)

canonical: tests/data/canonical.tsv; framing: the raw smuggling cases of tests/proxy.rs and
pipelined sequences; routes: routes.toml, each of its rules alone, and broken variants; args:
request bodies of tests/data/policy/*.toml per rule plan, multipart and query strings; lists:
upstream list bodies naming the generated facts of fuzz_targets/lists.rs; models: generator inputs and raw batches.
"""
import json, os, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def canonical():
    with open(os.path.join(ROOT, "tests/data/canonical.tsv")) as f:
        n = 0
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            write("canonical", f"tsv-{n:03}", line.split("\t")[0])
            n += 1
    write("canonical", "query", "/api/v1/images/?board_id=none&offset=0&limit=10&x=a%20b+c")


def framing():
    auth = "Authorization: Bearer t\r\n"
    cases = {
        "cl-te": f"POST /x HTTP/1.1\r\nHost: g\r\n{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "te-cl": f"POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "dup-cl": "POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        "cl-list": "POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 2, 2\r\n\r\n{}",
        "te-gzip": "POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: gzip\r\n\r\n{}",
        "te-twice": "POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
        "pipelined": "POST /a HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: g\r\n\r\n",
        "chunked-then-get": "POST /a HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n0\r\nX-T: 1\r\n\r\nGET /b?q=1 HTTP/1.1\r\nHost: g\r\n\r\n",
        "body-looks-like-head": "POST /a HTTP/1.1\r\nHost: g\r\nContent-Length: 60\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
        "upgrade-then-smuggle": "GET /a HTTP/1.1\r\nHost: g\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST /b HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "leading-crlf": "\r\nGET /a HTTP/1.1\r\nHost: g\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: g\r\n\r\n",
        "http10": "GET /a HTTP/1.0\r\n\r\n",
        "expect": "POST /a HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: g\r\n\r\n",
    }
    for name, text in cases.items():
        write("framing", name + "-whole", b"\xff" + text.encode())
        write("framing", name + "-bytes", b"\x07" + text.encode())


def routes():
    text = open(os.path.join(ROOT, "routes.toml")).read()
    write("routes", "shipped", text)
    blocks = re.split(r"(?m)^(?=\[\[rule\]\])", text)
    rules = [b for b in blocks if b.startswith("[[rule]]")]
    for i, b in enumerate(rules[::6]):
        write("routes", f"rule-{i:02}", b)
    write("routes", "pair", rules[0] + rules[1])
    write("routes", "overlap", rules[0] + rules[0].replace('id      = "', 'id      = "x'))
    write("routes", "coverage-loss", "allow_coverage_loss = true\n" + rules[2])
    write("routes", "shadow", rules[3].replace("[[rule]]\n", '[[rule]]\nmode = "shadow"\n', 1))
    write("routes", "bad-check", rules[4].replace("require", "require = [\"image.raed(path.x)\"]\nx_require", 1))


def args():
    # byte 0: 4*plan + (0|1) JSON, 2 multipart, 3 query
    bodies = set()
    for v in ("6.12.0", "6.14.2"):
        for m in re.finditer(r"^body = '(.*)'$", open(os.path.join(ROOT, f"tests/data/policy/{v}.toml")).read(), re.M):
            bodies.add(m.group(1))
    bodies |= {
        '{"board_id":"b1","image_name":"i1.png"}',
        '{"image_names":["a.png","b.png"],"board_id":"none"}',
        '{"batch":{"graph":{"nodes":{"n":{"image":{"image_name":"a.png"},"board":{"board_id":"b"}}}},"data":[[{"items":[{"image_name":"x.png"}]}]]},"prepend":false}',
        '{"is_admin":true,"is_admin":false}',
        '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]',
    }
    for i, b in enumerate(sorted(bodies)):
        for plan in (0, 5, 11, 23, 37):
            write("args", f"json-{i:03}-{plan}", bytes([plan * 4]) + b.encode())
    boundary = "XyZ"
    form = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n{{\"type\":\"user\"}}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nPNG\r\n"
        f"--{boundary}--\r\n"
    )
    write("args", "form", bytes([2]) + f"multipart/form-data; boundary={boundary}\n{form}".encode())
    write("args", "form-quoted", bytes([2]) + f"multipart/form-data; boundary=\"{boundary}\"\n{form}".encode())
    for i, q in enumerate(["board_id=none&offset=0&limit=10", "a=1&a=2", "x=a%20b+c&flag", "board%5Fid=x&=v&&"]):
        write("args", f"query-{i}", bytes([3]) + q.encode())


def lists():
    # byte 0: 6*caller + filter (0 uncategorized names, 1 queue items, 2 status, 3 counts,
    # 4 image names, 5 image DTOs); byte 1: scope
    names = json.dumps([f"g-{k}.png" for k in range(0, 96, 5)] + ["nope.png", 3])
    items = json.dumps([
        {"item_id": 5000 + k, "user_id": u, "batch_id": f"gb-{k % 4}", "session_id": f"gs-{k}", "status": "pending",
         "priority": 0, "origin": "canvas", "destination": "gd-0", "field_values": None, "session": {"id": "s"},
         "workflow": {}, "error_type": None, "error_message": None, "error_traceback": None}
        for k, u in [(1, "0e4f0705-3a40-49c1-98ef-4dd24b976973"), (2, "d55d0b80-535a-4997-8252-f6d3c8e231f5")]
    ])
    status = json.dumps({"queue": {"queue_id": "default", "item_id": 5003, "batch_id": "gb-3", "session_id": "gs-3",
                                    "pending": 1, "in_progress": 1, "completed": 0, "failed": 0, "canceled": 0, "total": 2},
                          "processor": {"is_started": True, "is_processing": True}})
    counts = json.dumps({"batch_id": "gb-1", "queue_id": "default", "origin": "canvas", "destination": "gd-1",
                         "pending": 9, "in_progress": 1, "completed": 3, "failed": 0, "canceled": 0, "total": 13})
    all_names = [f"g-{k}.png" for k in range(0, 96, 2)] + ["nope.png"]  # every board kind
    image_names = json.dumps({"image_names": all_names, "starred_count": 2, "total_count": len(all_names)})
    dtos = json.dumps([{"image_name": n, "image_url": f"/api/v1/images/i/{n}/full", "board_id": None,
                        "starred": False, "is_intermediate": False, "width": 8, "height": 8} for n in all_names[:18]])
    for caller in range(7):
        write("lists", f"names-{caller}", bytes([caller * 6 + 0, 0]) + names.encode())
        write("lists", f"items-{caller}", bytes([caller * 6 + 1, 0]) + items.encode())
        write("lists", f"status-{caller}", bytes([caller * 6 + 2, 0]) + status.encode())
        write("lists", f"counts-batch-{caller}", bytes([caller * 6 + 3, 2]) + counts.encode())
        write("lists", f"counts-dest-{caller}", bytes([caller * 6 + 3, 1]) + counts.encode())
        write("lists", f"image-names-{caller}", bytes([caller * 6 + 4, 0]) + image_names.encode())
        write("lists", f"image-dtos-{caller}", bytes([caller * 6 + 5, 0]) + dtos.encode())


def models():
    # Generator inputs (any bytes drive fuzz_targets/models.rs's batch writer) and, behind 0xff, raw batch bodies:
    # the web-UI-shaped and hostile batches of tests/models.rs.
    for i, seed in enumerate([bytes(range(0, 256, 3)), bytes(range(255, 0, -7)) * 3, bytes([4, 5, 3, 7, 6, 1] * 40),
                              bytes([3] * 200), bytes([8, 4, 6, 2, 0, 5] * 60)]):
        write("models", f"gen-{i}", seed)
    ident = lambda k: {"key": k, "hash": "blake3:" + k, "name": k, "base": "sd-1", "type": "lora"}
    bodies = [
        {"batch": {"graph": {"id": "g", "nodes": {"l": {"id": "l", "type": "lora_selector", "lora": ident("a")}}},
                   "runs": 2, "data": [[{"node_path": "p", "field_name": "value", "items": ["x", "y"]}]]}},
        {"batch": {"graph": {"nodes": {}}, "data": [[{"items": [{"image_name": "i.png", "key": "hidden"}]}]],
                   "workflow": {"nodes": [{"data": {"inputs": {"m": {"value": ident("w")}}}}]}}},
    ]
    for i, b in enumerate(bodies):
        write("models", f"raw-{i}", b"\xff" + json.dumps(b).encode())
    write("models", "raw-dup", b'\xff{"batch":{"graph":{"nodes":{"n":{"type":"x","m":{"key":"a","key":"b"}}}},"runs":"3"}}')


for f in (canonical, framing, routes, args, lists, models):
    f()
print("seeds written under", CORPUS, file=sys.stderr)
