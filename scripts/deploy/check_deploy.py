"""Checks of deploy/ (run by scripts/deploy/validate.sh in a venv with kubernetes-validate).

Each check prints 'ok   NAME' or 'FAIL NAME: why'; the last line is 'PASS n/N deploy checks' or
'FAIL n/N deploy checks', and the exit code is non-zero on any failure.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

import jsonschema
import yaml

results = []


def check(name, cond, why=""):
    results.append((name, bool(cond), why))
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f": {why}"))


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def kubernetes(args, folder):
    files = sorted(glob.glob(os.path.join(folder, "*.yaml")))
    check("kubernetes manifests present", files, folder)
    run = subprocess.run(
        [args.kubernetes_validate, "--strict", "--kubernetes-version", args.kubernetes_version, *files],
        capture_output=True,
        text=True,
    )
    check(
        f"kubernetes-validate --strict (Kubernetes {args.kubernetes_version}): {len(files)} files",
        run.returncode == 0,
        run.stdout + run.stderr,
    )
    docs = [d for f in files for d in yaml.safe_load_all(open(f)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployment = by_kind.get("Deployment", [None])[0]
    check("a Deployment", deployment is not None)
    if deployment is None:
        return
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    guard, invokeai = containers.get("invoke-guard"), containers.get("invokeai")
    check("guard is a sidecar in InvokeAI's pod", guard and invokeai)
    if not (guard and invokeai):
        return
    check(
        "InvokeAI listens on loopback only",
        env_of(invokeai).get("INVOKEAI_HOST") == "127.0.0.1",
        env_of(invokeai),
    )
    check(
        "guard forwards to InvokeAI on loopback",
        env_of(guard).get("INVOKE_GUARD_UPSTREAM", "").startswith("http://127.0.0.1:"),
    )
    sc = guard.get("securityContext", {})
    check("guard runAsNonRoot", sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, sc)
    check("guard readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True, sc)
    check("guard drops all capabilities", sc.get("capabilities", {}).get("drop") == ["ALL"], sc)
    ready = guard.get("readinessProbe", {}).get("httpGet", {})
    live = guard.get("livenessProbe", {}).get("httpGet", {})
    check("readiness probe on /readyz", ready.get("path") == "/readyz", ready)
    check("liveness probe on /healthz", live.get("path") == "/healthz", live)
    mounts = {m["mountPath"]: m for m in guard.get("volumeMounts", [])}
    db = mounts.get("/invokeai/databases", {})
    check("InvokeAI databases/ mounted read-only into the guard", db.get("readOnly") is True, db)
    routes_path = os.path.dirname(env_of(guard).get("INVOKE_GUARD_ROUTES", ""))
    routes_mount = mounts.get(routes_path, {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    routes_volume = volumes.get(routes_mount.get("name"), {})
    check(
        "routes.toml from a ConfigMap, mounted as a directory (hot reload)",
        "configMap" in routes_volume and "subPath" not in routes_mount,
        routes_mount,
    )
    cm_names = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
    check(
        "the routes ConfigMap is part of the manifests",
        routes_volume.get("configMap", {}).get("name") in cm_names,
        cm_names,
    )
    ledger = mounts.get(os.path.dirname(env_of(guard).get("INVOKE_GUARD_LEDGER", "")), {})
    check(
        "the ledger is on a persistent volume",
        "persistentVolumeClaim" in volumes.get(ledger.get("name"), {}),
        ledger,
    )
    ports = {p["name"]: p["containerPort"] for p in guard.get("ports", [])}
    services = by_kind.get("Service", [])
    targets = [p.get("targetPort") for s in services for p in s["spec"]["ports"]]
    check(
        "the Service targets the guard's port only",
        targets and all(t == "http" or t == ports.get("http") for t in targets) and "http" in ports,
        targets,
    )
    check(
        "termination grace above the guard's delay + drain",
        pod.get("terminationGracePeriodSeconds", 30) >= 20,
    )


def compose(args, path):
    doc = yaml.safe_load(open(path))
    schema = json.load(open(args.compose_schema))
    try:
        jsonschema.validate(doc, schema)
        check("compose.yaml matches the Compose schema", True)
    except jsonschema.ValidationError as e:
        check("compose.yaml matches the Compose schema", False, e.message)
    services = doc.get("services", {})
    guard, invokeai = services.get("guard", {}), services.get("invokeai", {})
    check("compose: InvokeAI and the guard", guard and invokeai)
    env = invokeai.get("environment", {})
    check("compose: InvokeAI listens on loopback only", env.get("INVOKEAI_HOST") == "127.0.0.1", env)
    check(
        "compose: the guard shares InvokeAI's network namespace",
        guard.get("network_mode") == "service:invokeai",
    )
    published = [str(p).split(":")[-1] for p in invokeai.get("ports", [])]
    check("compose: only the guard's port is published", published == ["9091"], published)
    vols = [str(v) for v in guard.get("volumes", [])]
    check(
        "compose: databases/ mounted read-only into the guard",
        any(v.endswith("/databases:/invokeai/databases:ro") for v in vols),
        vols,
    )
    ledger = [v for v in vols if ":/var/lib/invoke-guard" in v]
    check(
        "compose: the ledger on a named volume",
        ledger and ledger[0].split(":")[0] in doc.get("volumes", {}),
        ledger,
    )
    check("compose: guard read-only root filesystem", guard.get("read_only") is True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kubernetes-version", required=True)
    p.add_argument("--kubernetes-validate", required=True)
    p.add_argument("--compose-schema", required=True)
    p.add_argument("compose")
    p.add_argument("kubernetes")
    args = p.parse_args()
    compose(args, args.compose)
    kubernetes(args, args.kubernetes)
    passed = sum(1 for _, ok, _ in results if ok)
    word = "PASS" if passed == len(results) else "FAIL"
    print(f"{word} {passed}/{len(results)} deploy checks")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
