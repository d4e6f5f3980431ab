#!/usr/bin/env python3
"""Model access and generation quotas (the groups file's [models] / [quotas]) through the guard, against a real InvokeAI.

    tests/e2e/models.py --base http://127.0.0.1:GUARD --upstream http://127.0.0.1:INVOKEAI --manifest M.json \
        --db ROOT/databases/invokeai.db --workdir DIR [--report R.json] [--out F] [-v]

run.sh starts a guard with tests/e2e/models-groups.toml for this suite (after the matrix and the socket suite, on
the same server). Stdlib only.

Model records: five tiny safetensors files written here (a few kB each, no torch) are installed through InvokeAI's
OWN install API (POST /api/v2/models/install?source=PATH&inplace=true, as the admin, straight to InvokeAI): its
probe identifies them from their tensor names and shapes exactly as it identifies real checkpoints, and it writes
the records itself (an SD 1.5 main model, an SD 1.5 VAE, two SD 1.5 LoRAs and an SDXL main model). Nothing is
written into InvokeAI's database by hand, so the records are whatever this version makes of them (keys, config
shape, hashes). The models never run: the queue processor is paused while items are queued, and the queue is
cleared afterwards.

Users (created here by the admin, straight to InvokeAI): mia and pia (group interns), noah (group artists), olga
(in no group). The groups file: interns may not use LoRAs named *detail*; SDXL models are for artists only; mia's
group may have 4 items queued; pia may enqueue 3 per "minute", a window shortened to 6 s in the file so that its
expiry is seen without waiting a minute; admins are exempt.

Cases: what each user's model list holds, by key / attributes; the enqueue of a batch shaped like the web UI's
(SD 1.5 main model loader with the whole record, LoRA selectors into a collection loader, a VAE loader, metadata)
with allowed and with disallowed models (refused with 403 naming the model; nothing queued); a LoRA hidden in a
batch data item (InvokeAI alone would take the batch); SDXL for the artist only; two clients enqueueing at once
for the same user (exactly the limit is queued, the rest 429 with Retry-After); a rolling window that fills,
answers 429 with Retry-After, and frees up after that many seconds; admins exempt from both.

Outcomes as in matrix.py: pass, LEAK (a user sees or runs what she may not), FALSE_DENY (a permitted request was
refused, or permitted items are missing), FAIL. Last line: PASS n/N leaks=L false_denies=F (InvokeAI V models).
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from igclient import Client, png  # noqa: E402

USERS = {
    "mia": ("mia@example.com", "MiaPass12345"),
    "pia": ("pia@example.com", "PiaPass12345"),
    "noah": ("noah@example.com", "NoahPass1234"),
    "olga": ("olga@example.com", "OlgaPass1234"),
}
ENQUEUE = "/api/v1/queue/default/enqueue_batch"


def safetensors(tensors, seed: int) -> bytes:
    """A safetensors file of small F16 tensors (name, shape); values vary with the seed (InvokeAI refuses a second
    install of the same file hash)."""
    header, blobs, off = {}, [], 0
    for k, (name, shape) in enumerate(tensors):
        n = 1
        for d in shape:
            n *= d
        vals = [((i * 37 + seed * 11 + k) % 17 - 8) / 100.0 for i in range(n)]
        blob = struct.pack(f"<{n}e", *vals)
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


# The tensor names and shapes InvokeAI's probe reads to classify each file (configs/main.py, vae.py, lora.py).
UNET = "model.diffusion_model.input_blocks"
FILES = {
    "tiny-main-sd15": [(f"{UNET}.2.1.transformer_blocks.0.attn2.to_k.weight", (1, 768)),
                       (f"{UNET}.0.0.weight", (1, 4, 1, 1))],
    "tiny-main-sdxl": [(f"{UNET}.4.1.transformer_blocks.0.attn2.to_k.weight", (1, 2048)),
                       (f"{UNET}.0.0.weight", (1, 4, 1, 1))],
    "tiny-vae-sd15": [("encoder.conv_in.weight", (1, 3, 1, 1)), ("decoder.conv_in.weight", (1, 4, 1, 1))],
    "tiny-lora-style": [("lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight", (1, 768)),
                        ("lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight", (768, 1))],
    "tiny-lora-detail": [("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", (1, 768)),
                         ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", (768, 1))],
}
EXPECTED = {"tiny-main-sd15": ("sd-1", "main"), "tiny-main-sdxl": ("sdxl", "main"), "tiny-vae-sd15": ("sd-1", "vae"),
            "tiny-lora-style": ("sd-1", "lora"), "tiny-lora-detail": ("sd-1", "lora")}


def ident(rec: dict) -> dict:
    return {k: rec[k] for k in ("key", "hash", "name", "base", "type")}


def web_ui_batch(main: dict, loras: list[dict], vae: dict | None, prompts: list[str], seed0: int) -> dict:
    """An SD 1.5 text-to-image batch as the 6.12-6.14 web UI builds it (buildSD1Graph, addLoRAs, prepareLinearUIBatch)."""
    nodes, edges = {}, []

    def add(nid, **v):
        v.update(id=nid, is_intermediate=v.get("is_intermediate", True), use_cache=True)
        nodes[nid] = v

    def edge(a, fa, b, fb):
        edges.append({"source": {"node_id": a, "field": fa}, "destination": {"node_id": b, "field": fb}})

    add("seed:e2e", type="integer")
    add("positive_prompt:e2e", type="string")
    add("sd1_model_loader:e2e", type="main_model_loader", model=main)
    add("clip_skip:e2e", type="clip_skip", skipped_layers=0)
    add("pos_cond:e2e", type="compel")
    add("pos_cond_collect:e2e", type="collect")
    add("neg_cond:e2e", type="compel", prompt="")
    add("neg_cond_collect:e2e", type="collect")
    add("noise:e2e", type="noise", use_cpu=True)
    add("denoise_latents:e2e", type="denoise_latents", cfg_scale=7.5, cfg_rescale_multiplier=0,
        scheduler="euler", steps=2, denoising_start=0, denoising_end=1)
    add("canvas_output:e2e", type="l2i", fp32=False, is_intermediate=False)
    edge("sd1_model_loader:e2e", "clip", "clip_skip:e2e", "clip")
    edge("positive_prompt:e2e", "value", "pos_cond:e2e", "prompt")
    edge("pos_cond:e2e", "conditioning", "pos_cond_collect:e2e", "item")
    edge("pos_cond_collect:e2e", "collection", "denoise_latents:e2e", "positive_conditioning")
    edge("neg_cond:e2e", "conditioning", "neg_cond_collect:e2e", "item")
    edge("neg_cond_collect:e2e", "collection", "denoise_latents:e2e", "negative_conditioning")
    edge("seed:e2e", "value", "noise:e2e", "seed")
    edge("noise:e2e", "noise", "denoise_latents:e2e", "noise")
    edge("denoise_latents:e2e", "latents", "canvas_output:e2e", "latents")
    meta = {"type": "core_metadata", "cfg_scale": 7.5, "model": ident(main), "steps": 2, "scheduler": "euler",
            "clip_skip": 0, "generation_mode": "txt2img", "negative_prompt": ""}
    if vae:
        add("vae:e2e", type="vae_loader", vae_model=ident(vae))
        edge("vae:e2e", "vae", "canvas_output:e2e", "vae")
        meta["vae"] = ident(vae)
    else:
        edge("sd1_model_loader:e2e", "vae", "canvas_output:e2e", "vae")
    if loras:
        add("lora_collector:e2e", type="collect")
        add("lora_collection_loader:e2e", type="lora_collection_loader")
        edge("lora_collector:e2e", "collection", "lora_collection_loader:e2e", "loras")
        edge("sd1_model_loader:e2e", "unet", "lora_collection_loader:e2e", "unet")
        edge("clip_skip:e2e", "clip", "lora_collection_loader:e2e", "clip")
        edge("lora_collection_loader:e2e", "unet", "denoise_latents:e2e", "unet")
        edge("lora_collection_loader:e2e", "clip", "pos_cond:e2e", "clip")
        edge("lora_collection_loader:e2e", "clip", "neg_cond:e2e", "clip")
        meta["loras"] = []
        for i, lora in enumerate(loras):
            add(f"lora_selector:e2e{i}", type="lora_selector", lora=ident(lora), weight=0.75)
            edge(f"lora_selector:e2e{i}", "lora", "lora_collector:e2e", "item")
            meta["loras"].append({"model": ident(lora), "weight": 0.75})
    else:
        edge("sd1_model_loader:e2e", "unet", "denoise_latents:e2e", "unet")
        edge("clip_skip:e2e", "clip", "pos_cond:e2e", "clip")
        edge("clip_skip:e2e", "clip", "neg_cond:e2e", "clip")
    add("core_metadata:e2e", **meta)
    edge("seed:e2e", "value", "core_metadata:e2e", "seed")
    edge("positive_prompt:e2e", "value", "core_metadata:e2e", "positive_prompt")
    data = [[{"node_path": "seed:e2e", "field_name": "value", "items": [seed0 + i for i in range(len(prompts))]},
             {"node_path": "positive_prompt:e2e", "field_name": "value", "items": prompts}]]
    return {"prepend": False, "batch": {"graph": {"id": f"sd1_graph:{time.time_ns()}", "nodes": nodes, "edges": edges},
                                        "runs": 1, "data": data, "origin": "generation", "destination": "gallery"}}


class Suite:
    def __init__(self, a):
        self.a = a
        self.m = json.loads(Path(a.manifest).read_text())
        self.version = self.m.get("invokeai_version") or self.m.get("version") or "?"
        # Several users by Bearer token: no shared cookie jar (it would mix their cookies).
        self.up = Client(a.upstream, cookie_jar=False)
        self.g = Client(a.base, cookie_jar=False)
        self.tokens: dict[str, str] = {}
        self.records: dict[str, dict] = {}
        self.results: list[dict] = []
        self.out = open(a.out, "w") if a.out else None

    # ---------------------------------------------------------------- reporting
    def say(self, line: str):
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()

    def record(self, name: str, outcome: str, message: str = ""):
        self.results.append({"name": name, "outcome": outcome, "message": message})
        tag = {"pass": "ok  ", "LEAK": "LEAK", "FALSE_DENY": "FDNY", "FAIL": "FAIL"}[outcome]
        if outcome != "pass" or self.a.verbose:
            self.say(f"{tag} {name}{': ' + message if message else ''}")

    def expect(self, name: str, ok: bool, bad: str, message: str):
        self.record(name, "pass" if ok else bad, "" if ok else message)
        return ok

    # ---------------------------------------------------------------- helpers
    def login(self, who: str, email: str, password: str) -> str:
        r = self.up.request("POST", "/api/v1/auth/login", json_body={"email": email, "password": password,
                                                                   "remember_me": False})
        if r.status != 200:
            raise RuntimeError(f"login {email}: {r.status} {r.detail()}")
        self.tokens[who] = r.json()["token"]
        return self.tokens[who]

    def db(self):
        return sqlite3.connect(f"file:{self.a.db}?mode=ro", uri=True, timeout=10)

    def queued(self, who: str) -> int:
        uid = self.uids[who]
        with self.db() as c:
            return c.execute("SELECT COUNT(*) FROM session_queue WHERE user_id = ? AND status = 'pending'",
                             (uid,)).fetchone()[0]

    def clear_queue(self):
        r = self.up.request("PUT", "/api/v1/queue/default/clear", self.tokens["admin"])
        if r.status != 200:
            raise RuntimeError(f"clear queue: {r.status} {r.detail()}")

    # ---------------------------------------------------------------- setup (straight to InvokeAI)
    def setup(self):
        admin = self.m["users"]["admin"]
        self.login("admin", admin["email"], admin["password"])
        self.uids = {}
        for who, (email, pw) in USERS.items():
            r = self.up.request("POST", "/api/v1/auth/users", self.tokens["admin"],
                                json_body={"email": email, "display_name": who.title(), "password": pw, "is_admin": False})
            if r.status not in (200, 201):
                raise RuntimeError(f"create {who}: {r.status} {r.detail()}")
            self.uids[who] = r.json()["user_id"]
            self.login(who, email, pw)
        self.uids["admin"] = admin["user_id"]
        # The models: written here, installed by InvokeAI itself.
        work = Path(self.a.workdir)
        work.mkdir(parents=True, exist_ok=True)
        seed = time.time_ns() % 100000
        for name, tensors in FILES.items():
            path = work / f"{name}.safetensors"
            path.write_bytes(safetensors(tensors, seed))
            r = self.up.request("POST", "/api/v2/models/install", self.tokens["admin"],
                                params={"source": str(path), "inplace": "true"}, json_body={})
            if r.status not in (200, 201):
                raise RuntimeError(f"install {name}: {r.status} {r.detail()}")
        deadline = time.time() + 120
        while time.time() < deadline:
            listed = self.up.request("GET", "/api/v2/models/", self.tokens["admin"]).json() or {}
            self.records = {m["name"]: m for m in listed.get("models", []) if m["name"] in FILES}
            if len(self.records) == len(FILES):
                break
            time.sleep(0.5)
        jobs = self.up.request("GET", "/api/v2/models/install", self.tokens["admin"]).json() or []
        failed = [f"{j.get('source')}: {(j.get('error') or '')[:200]}" for j in jobs if j.get("status") == "error"]
        for name, (base, kind) in EXPECTED.items():
            rec = self.records.get(name)
            self.expect(f"setup: InvokeAI installed {name} as {base} {kind}",
                        rec is not None and (rec["base"], rec["type"]) == (base, kind), "FAIL",
                        f"got {rec and (rec['base'], rec['type'])}; failed jobs: {failed}")
        if len(self.records) != len(FILES):
            raise RuntimeError("the models did not install")
        # mia's own image (a batch naming an image must name one she may read).
        data = png(8, 8, (10, 200, 30))
        r = self.up.request("POST", "/api/v1/images/upload", self.tokens["mia"], params={"image_category": "user",
                            "is_intermediate": "false"}, files=[("file", "mia.png", data, "image/png")])
        if r.status not in (200, 201):
            raise RuntimeError(f"upload as mia: {r.status} {r.detail()}")
        self.mia_image = r.json()["image_name"]
        # Nothing runs while this suite counts queue items.
        r = self.up.request("PUT", "/api/v1/queue/default/processor/pause", self.tokens["admin"])
        if r.status != 200:
            raise RuntimeError(f"pause the processor: {r.status} {r.detail()}")
        self.clear_queue()

    # ---------------------------------------------------------------- cases
    def lists(self):
        everything = set(FILES)
        want = {
            "mia": everything - {"tiny-lora-detail", "tiny-main-sdxl"},
            "pia": everything - {"tiny-lora-detail", "tiny-main-sdxl"},
            "noah": everything,
            "olga": everything - {"tiny-main-sdxl"},
            "admin": everything,
        }
        for who, names in want.items():
            for path in ("/api/v2/models/", "/api/v2/models/?model_type=lora"):
                r = self.g.request("GET", path, self.tokens[who])
                got = {m["name"] for m in (r.json() or {}).get("models", [])} & everything
                expected = {n for n in names if "lora" in n} if "lora" in path else names
                leak = got - expected
                self.expect(f"lists: {who} GET {path} shows exactly her models", r.status == 200 and got == expected,
                            "LEAK" if leak else "FALSE_DENY",
                            f"{r.status}: extra {sorted(leak)}, missing {sorted(expected - got)}")
        detail, sdxl = self.records["tiny-lora-detail"], self.records["tiny-main-sdxl"]
        r = self.g.request("GET", f"/api/v2/models/i/{detail['key']}", self.tokens["mia"])
        self.expect("lists: mia GET the detail LoRA by key is 404 (as a missing key)", r.status == 404, "LEAK",
                    f"{r.status} {r.text[:120]}")
        r = self.g.request("GET", f"/api/v2/models/i/{detail['key']}", self.tokens["olga"])
        self.expect("lists: olga GET the detail LoRA by key", r.status == 200, "FALSE_DENY", f"{r.status}")
        r = self.g.request("GET", "/api/v2/models/get_by_attrs", self.tokens["olga"],
                           params={"name": sdxl["name"], "type": "main", "base": "sdxl"})
        self.expect("lists: olga get_by_attrs of the SDXL model is 404", r.status == 404, "LEAK", f"{r.status}")
        r = self.g.request("GET", "/api/v2/models/get_by_attrs", self.tokens["noah"],
                           params={"name": sdxl["name"], "type": "main", "base": "sdxl"})
        self.expect("lists: noah get_by_attrs of the SDXL model", r.status == 200 and r.json().get("key") == sdxl["key"],
                    "FALSE_DENY", f"{r.status}")
        # The evidence that the guard is what hides them: InvokeAI itself lists everything to mia.
        r = self.up.request("GET", "/api/v2/models/", self.tokens["mia"])
        got = {m["name"] for m in (r.json() or {}).get("models", [])} & everything
        self.expect("lists: InvokeAI alone lists every model to mia (what the guard closes)", got == everything,
                    "FAIL", f"{sorted(got)}")

    def enqueue(self, who: str, body: dict, client: Client | None = None):
        return (client or self.g).request("POST", ENQUEUE, self.tokens[who], json_body=body)

    def enqueues(self):
        rec = self.records
        main, vae, style, detail = (rec["tiny-main-sd15"], rec["tiny-vae-sd15"], rec["tiny-lora-style"],
                                    rec["tiny-lora-detail"])
        self.clear_queue()
        ok = web_ui_batch(main, [style], vae, ["a cat"], 1)
        r = self.enqueue("mia", ok)
        self.expect("enqueue: mia's web-UI batch with her models is queued",
                    r.status == 200 and self.queued("mia") == 1, "FALSE_DENY", f"{r.status} {r.detail()}")
        bad = web_ui_batch(main, [style, detail], vae, ["a cat"], 2)
        r = self.enqueue("mia", bad)
        self.expect("enqueue: mia's batch with the detail LoRA is refused naming it",
                    r.status == 403 and "'tiny-lora-detail'" in r.detail() and self.queued("mia") == 1,
                    "LEAK", f"{r.status} {r.detail()} (queued {self.queued('mia')})")
        r = self.enqueue("olga", bad)
        self.expect("enqueue: olga may use the detail LoRA", r.status == 200, "FALSE_DENY", f"{r.status} {r.detail()}")
        hidden = web_ui_batch(main, [style], vae, ["a cat", "a dog"], 3)
        hidden["batch"]["data"].append([{"node_path": "canvas_output:e2e", "field_name": "board",
                                         "items": [{"image_name": self.mia_image, **ident(detail)}]}])
        before = self.queued("mia")
        r = self.enqueue("mia", hidden)
        self.expect("enqueue: a LoRA hidden in a batch data item is refused",
                    r.status == 403 and "'tiny-lora-detail'" in r.detail() and self.queued("mia") == before,
                    "LEAK", f"{r.status} {r.detail()}")
        sdxl = web_ui_batch(rec["tiny-main-sdxl"], [], None, ["a castle"], 4)
        r = self.enqueue("olga", sdxl)
        self.expect("enqueue: olga's SDXL batch is refused naming the model",
                    r.status == 403 and "'tiny-main-sdxl'" in r.detail(), "LEAK", f"{r.status} {r.detail()}")
        r = self.enqueue("noah", sdxl)
        self.expect("enqueue: noah (artists) enqueues SDXL", r.status == 200, "FALSE_DENY", f"{r.status} {r.detail()}")
        r = self.enqueue("admin", web_ui_batch(rec["tiny-main-sdxl"], [detail], None, ["x"], 5))
        self.expect("enqueue: admins are exempt from model access", r.status == 200, "FALSE_DENY",
                    f"{r.status} {r.detail()}")
        unknown = web_ui_batch(main, [dict(style, key="no-such-key")], None, ["x"], 6)
        r = self.enqueue("olga", unknown)
        self.expect("enqueue: an unknown key is refused", r.status == 403 and "Unknown model" in r.detail(), "LEAK",
                    f"{r.status} {r.detail()}")

    def concurrent(self):
        """Two clients (own connections) enqueue for mia at once: exactly her limit (4) is queued."""
        self.clear_queue()
        main, style = self.records["tiny-main-sd15"], self.records["tiny-lora-style"]
        results: list = []
        lock = threading.Lock()
        start = threading.Barrier(2)

        def client(n):
            c = Client(self.a.base, cookie_jar=False)
            start.wait()
            for i in range(4):
                r = self.enqueue("mia", web_ui_batch(main, [style], None, [f"c{n}-{i}"], 100 * n + i), c)
                with lock:
                    results.append(r)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = [r for r in results if r.status == 200]
        refused = [r for r in results if r.status == 429]
        queued = self.queued("mia")
        self.expect("quota: concurrent enqueues never overshoot mia's limit of 4", queued <= 4, "LEAK",
                    f"queued {queued}")
        self.expect("quota: exactly the limit was taken (4 accepted, 4 refused)",
                    len(accepted) == 4 and len(refused) == 4 and queued == 4, "FALSE_DENY",
                    f"accepted {len(accepted)}, refused {len(refused)}, queued {queued}: "
                    f"{sorted({r.status for r in results})}")
        good = [r for r in refused if r.header("retry-after") == "5"
                and r.detail().startswith("You have 4 generations queued and this request would add 1; "
                                          "the limit for your group (interns) is 4")]
        self.expect("quota: each 429 carries Retry-After and a message a person understands",
                    len(good) == len(refused) and refused, "FAIL",
                    f"{[(r.header('retry-after'), r.detail()) for r in refused][:2]}")

    def window(self):
        """pia: 3 per 'minute' (6 s in the file): the 4th is refused until the window frees it."""
        main = self.records["tiny-main-sd15"]
        statuses = [self.enqueue("pia", web_ui_batch(main, [], None, [f"w{i}"], 200 + i)).status for i in range(3)]
        self.expect("window: pia enqueues 3 within the window", statuses == [200, 200, 200], "FALSE_DENY",
                    f"{statuses}")
        r = self.enqueue("pia", web_ui_batch(main, [], None, ["w3"], 203))
        retry = r.header("retry-after")
        ok = r.status == 429 and retry is not None and 1 <= int(retry) <= 6 and "per minute" in r.detail()
        self.expect("window: the 4th is refused with 429 and Retry-After", ok, "LEAK",
                    f"{r.status} {retry} {r.detail()}")
        if not ok:
            return
        time.sleep(int(retry) + 0.5)
        r = self.enqueue("pia", web_ui_batch(main, [], None, ["w4"], 204))
        self.expect("window: after Retry-After seconds the window has room again", r.status == 200, "FALSE_DENY",
                    f"{r.status} {r.detail()}")

    def admins(self):
        main = self.records["tiny-main-sd15"]
        r = self.enqueue("admin", web_ui_batch(main, [], None, [f"a{i}" for i in range(12)], 300))
        self.expect("quota: admins are exempt (12 items at once)", r.status == 200, "FALSE_DENY",
                    f"{r.status} {r.detail()}")

    def run(self) -> int:
        try:
            self.setup()
            self.lists()
            self.enqueues()
            self.concurrent()
            self.window()
            self.admins()
        except Exception as e:  # noqa: BLE001 - reported as a failed case, the run goes on to clean up
            self.record(f"suite aborted: {type(e).__name__}", "FAIL", str(e)[:300])
        finally:
            try:
                self.clear_queue()
                self.up.request("PUT", "/api/v1/queue/default/processor/resume", self.tokens.get("admin"))
            except Exception as e:  # noqa: BLE001
                self.say(f"note: cleanup failed: {e}")
        n_pass = sum(r["outcome"] == "pass" for r in self.results)
        leaks = sum(r["outcome"] == "LEAK" for r in self.results)
        fdeny = sum(r["outcome"] == "FALSE_DENY" for r in self.results)
        if self.a.report:
            Path(self.a.report).write_text(json.dumps({"version": self.version, "results": self.results,
                                                       "records": self.records}, indent=1))
        self.say(f"PASS {n_pass}/{len(self.results)} leaks={leaks} false_denies={fdeny} (InvokeAI {self.version} models)"
                 if n_pass == len(self.results) else
                 f"FAIL {n_pass}/{len(self.results)} leaks={leaks} false_denies={fdeny} (InvokeAI {self.version} models)")
        return 0 if n_pass == len(self.results) else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the guard running with tests/e2e/models-groups.toml")
    p.add_argument("--upstream", required=True, help="InvokeAI itself (setup and evidence only)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--report")
    p.add_argument("--out")
    p.add_argument("-v", "--verbose", action="store_true")
    sys.exit(Suite(p.parse_args()).run())


if __name__ == "__main__":
    main()
