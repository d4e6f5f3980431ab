#!/usr/bin/env python3
"""Print every model-carrying input field of a running InvokeAI, from its /openapi.json (stdlib only).

    python3 scripts/invokeai/dump-model-fields.py http://127.0.0.1:PORT > tests/data/openapi/invokeai-VERSION.model-fields.tsv
    python3 scripts/invokeai/dump-model-fields.py --runtime-nodes VENV/lib/python3.11/site-packages/invokeai

The second form prints the node types that choose a model at run time from data a batch does not
contain, read from the installed invocations' source: nodes whose `invoke` resolves a key or a name
from metadata (`extract_model_key`, `get_model`) and the saved-workflow call (`call_saved_workflow`).

A field carries a model when its schema reaches `ModelIdentifierField` (InvokeAI's model reference:
key, hash, name, base, type, submodel_type), directly or nested: lists (`[]`), objects such as
LoRAField, UNetField, CLIPField, VAEField, T5EncoderField, TransformerField, ControlField,
IPAdapterField (`.member`), unions, dicts (`{}`). Output, sorted: one line per path,
`NODE_TYPE<TAB>FIELD<TAB>PATH` where PATH is the position of the reference inside the field's value
(empty: the field itself is the reference), e.g. `lora_collection_loader  loras  []lora`.
"""
import gzip
import json
import sys
import urllib.request

TARGET = "ModelIdentifierField"


def fetch(base):
    req = urllib.request.Request(base.rstrip("/") + "/openapi.json", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read()
        if r.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
    return json.loads(raw)


def runtime_nodes(pkg):
    import pathlib
    import re

    found = set()
    for path in sorted(pathlib.Path(pkg, "app", "invocations").glob("*.py")):
        text = path.read_text()
        for part in re.split(r'@invocation\(\s*"', text)[1:]:
            name = part.split('"', 1)[0]
            body = part.split("@invocation_output")[0]
            if "extract_model_key(" in body or "get_model(" in body or name == "call_saved_workflow":
                found.add(name)
    for name in sorted(found):
        print(name)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--runtime-nodes":
        runtime_nodes(sys.argv[2])
        return
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    spec = fetch(sys.argv[1])
    schemas = spec["components"]["schemas"]

    def paths(schema, seen):
        """Positions of model references inside a value of this schema."""
        out = set()
        if not isinstance(schema, dict):
            return out
        ref = schema.get("$ref")
        if ref:
            name = ref.rsplit("/", 1)[-1]
            if name == TARGET:
                return {""}
            if name in seen:
                return out
            return paths(schemas.get(name, {}), seen | {name})
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key, []):
                out |= paths(sub, seen)
        if "items" in schema:
            out |= {"[]" + p for p in paths(schema["items"], seen)}
        if isinstance(schema.get("additionalProperties"), dict):
            out |= {"{}" + p for p in paths(schema["additionalProperties"], seen)}
        for prop, sub in (schema.get("properties") or {}).items():
            out |= {"." + prop + p for p in paths(sub, seen)}
        return out

    rows = set()
    for name, schema in schemas.items():
        props = schema.get("properties") or {}
        node_type = (props.get("type") or {}).get("default") or (props.get("type") or {}).get("const")
        # Invocations (not outputs): InvokeAI's schemas carry an `output` reference and a node `type`.
        if not node_type or "output" not in schema:
            continue
        for field, sub in props.items():
            for p in paths(sub, frozenset({name})):
                rows.add((node_type, field, p.lstrip(".")))
    for row in sorted(rows):
        print("\t".join(row))


if __name__ == "__main__":
    main()
