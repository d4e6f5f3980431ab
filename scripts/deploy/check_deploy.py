"""Checks of deploy/ (run by scripts/deploy/validate.sh in a venv with kubernetes-validate, with kustomize).

Each check prints 'ok   NAME' or 'FAIL NAME: why'; the last line is 'PASS n/N deploy checks' or
'FAIL n/N deploy checks', and the exit code is non-zero on any failure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jsonschema
import yaml

results = []


def check(name, cond, why=""):
    results.append((name, bool(cond), why))
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f": {why}"))


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def kustomize_build(args, folder):
    run = subprocess.run([args.kustomize, "build", folder], capture_output=True, text=True)
    return run.returncode, run.stdout, run.stderr


def overlay_replaces_policy(args, base):
    """An operator's overlay replaces the stock routes (configMapGenerator behavior: replace)."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "routes.toml"), "w") as f:
            f.write("# my policy\n")
        with open(os.path.join(tmp, "kustomization.yaml"), "w") as f:
            yaml.safe_dump(
                {
                    "resources": [os.path.relpath(os.path.abspath(base), tmp)],
                    "configMapGenerator": [
                        {"name": "invoke-guard-routes", "behavior": "replace", "files": ["routes.toml"]}
                    ],
                },
                f,
            )
        rc, out, err = kustomize_build(args, tmp)
        if rc != 0:
            return False, err
        docs = [d for d in yaml.safe_load_all(out) if d]
        cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("invoke-guard-routes-")]
        vols = [
            v["configMap"]["name"]
            for d in docs
            if d["kind"] == "Deployment"
            for v in d["spec"]["template"]["spec"]["volumes"]
            if "configMap" in v
        ]
        ok = len(cms) == 1 and cms[0]["data"]["routes.toml"] == "# my policy\n" and cms[0]["metadata"]["name"] in vols
        return ok, f"{[c['metadata']['name'] for c in cms]} {vols}"


def kubernetes(args, folder):
    rc, rendered, err = kustomize_build(args, folder)
    check(f"kustomize build {folder}", rc == 0 and rendered.strip(), err)
    if rc != 0:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(rendered)
        rendered_path = f.name
    run = subprocess.run(
        [args.kubernetes_validate, "--strict", "--kubernetes-version", args.kubernetes_version, rendered_path],
        capture_output=True,
        text=True,
    )
    os.unlink(rendered_path)
    check(
        f"kubernetes-validate --strict (Kubernetes {args.kubernetes_version}): the kustomize build",
        run.returncode == 0,
        run.stdout + run.stderr,
    )
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployment = by_kind.get("Deployment", [None])[0]
    check("a Deployment", deployment is not None)
    if deployment is None:
        return
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    inits = {c["name"]: c for c in pod.get("initContainers", [])}
    guard, invokeai = inits.get("invoke-guard"), containers.get("invokeai")
    check(
        "guard is a native sidecar (init container, restartPolicy: Always) beside InvokeAI",
        guard and invokeai and guard.get("restartPolicy") == "Always" and "invoke-guard" not in containers,
    )
    if not (guard and invokeai):
        return
    check("no service-link variables (enableServiceLinks: false)", pod.get("enableServiceLinks") is False)
    check(
        "InvokeAI listens on loopback only",
        env_of(invokeai).get("INVOKEAI_HOST") == "127.0.0.1",
        env_of(invokeai),
    )
    genv = env_of(guard)
    check("guard forwards to InvokeAI on loopback", genv.get("INVOKE_GUARD_UPSTREAM", "").startswith("http://127.0.0.1:"))
    check(
        "guard waits for InvokeAI's database on a first install (db_wait_ms > 0)",
        int(genv.get("INVOKE_GUARD_DB_WAIT_MS") or 0) > 0,
        genv,
    )
    sc = guard.get("securityContext", {})
    check("guard runAsNonRoot", sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, sc)
    check("guard readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True, sc)
    check("guard drops all capabilities", sc.get("capabilities", {}).get("drop") == ["ALL"], sc)
    ready = guard.get("readinessProbe", {}).get("httpGet", {})
    live = guard.get("livenessProbe", {}).get("httpGet", {})
    start = guard.get("startupProbe", {}).get("httpGet", {})
    check("readiness probe on /readyz", ready.get("path") == "/readyz", ready)
    check("liveness probe on /healthz", live.get("path") == "/healthz", live)
    # /readyz would deadlock a sidecar: InvokeAI only starts once the guard's startup probe passed.
    check("guard startup probe on /healthz (routes loaded; not /readyz)", start.get("path") == "/healthz", start)
    # InvokeAI: its own API is what its probes ask.
    for kind in ("startupProbe", "livenessProbe"):
        cmd = " ".join(invokeai.get(kind, {}).get("exec", {}).get("command", []))
        check(f"InvokeAI {kind} asks its API on loopback", "http://127.0.0.1:9090/api/v1/app/version" in cmd, cmd)
    isc = invokeai.get("securityContext", {})
    check(
        "InvokeAI securityContext (no privilege escalation, capabilities dropped, seccomp)",
        isc.get("allowPrivilegeEscalation") is False
        and isc.get("capabilities", {}).get("drop") == ["ALL"]
        and isc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        isc,
    )
    res = invokeai.get("resources", {})
    check(
        "InvokeAI resources (requests and a memory limit)",
        res.get("requests", {}).get("memory") and res.get("requests", {}).get("cpu") and res.get("limits", {}).get("memory"),
        res,
    )
    pre = invokeai.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_s = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
    check("InvokeAI preStop covers the guard's 5 s shutdown delay", pre_s >= 5, pre)
    check(
        "termination grace above InvokeAI's preStop + the guard's delay + drain",
        pod.get("terminationGracePeriodSeconds", 30) >= pre_s + 5 + 10 + 10,
        pod.get("terminationGracePeriodSeconds"),
    )
    psc = pod.get("securityContext", {})
    owner = inits.get("ledger-owner", {})
    owner_mounts = {m["name"] for m in owner.get("volumeMounts", [])}
    check(
        "no pod-level fsGroup (the 100 Gi InvokeAI volume is not re-owned); only the ledger is",
        "fsGroup" not in psc and owner_mounts == {"ledger"},
        (psc, owner_mounts),
    )
    mounts = {m["mountPath"]: m for m in guard.get("volumeMounts", [])}
    db = mounts.get("/invokeai/databases", {})
    check("InvokeAI databases/ mounted read-only into the guard", db.get("readOnly") is True, db)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    cms = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    for env, base, key in (
        ("INVOKE_GUARD_ROUTES", "invoke-guard-routes", "routes.toml"),
        ("INVOKE_GUARD_GROUPS", "invoke-guard-groups", "groups.toml"),
    ):
        path = genv.get(env, "")
        mount = mounts.get(os.path.dirname(path), {})
        name = volumes.get(mount.get("name"), {}).get("configMap", {}).get("name", "")
        check(
            f"{key} from a hash-suffixed generated ConfigMap, mounted as a directory (hot reload)",
            name.startswith(base + "-") and name in cms and key in cms[name]["data"] and "subPath" not in mount
            and os.path.basename(path) == key,
            (path, mount, name),
        )
    ledger = mounts.get(os.path.dirname(genv.get("INVOKE_GUARD_LEDGER", "")), {})
    check(
        "the ledger is on a persistent volume",
        "persistentVolumeClaim" in volumes.get(ledger.get("name"), {}),
        ledger,
    )
    pvcs = {p["metadata"]["name"]: p for p in by_kind.get("PersistentVolumeClaim", [])}
    data_claim = volumes.get("invokeai-data", {}).get("persistentVolumeClaim", {}).get("claimName")
    check(
        "InvokeAI's volume is ReadWriteOncePod (never two servers on one SQLite file)",
        pvcs.get(data_claim, {}).get("spec", {}).get("accessModes") == ["ReadWriteOncePod"],
        data_claim,
    )
    ports = {p["name"]: p["containerPort"] for p in guard.get("ports", [])}
    services = by_kind.get("Service", [])
    targets = [p.get("targetPort") for s in services for p in s["spec"]["ports"]]
    check(
        "the Service targets the guard's port only",
        targets and all(t == "http" or t == ports.get("http") for t in targets) and "http" in ports,
        targets,
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in by_kind.get("NetworkPolicy", [])
        if all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
        and "Ingress" in p["spec"].get("policyTypes", [])
    ]
    open_ports = set()
    admin_from = []
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if not rule.get("from"):
                    open_ports.add(port.get("port"))
                elif port.get("port") == ports.get("admin"):
                    admin_from.extend(rule["from"])
    check(
        "a NetworkPolicy: the guard's port open, the admin port not cluster-wide",
        policies and open_ports == {ports.get("http")} and admin_from
        and all(f.get("namespaceSelector") or f.get("podSelector") for f in admin_from),
        (open_ports, admin_from),
    )
    ok, why = overlay_replaces_policy(args, folder)
    check("an overlay replaces the stock routes (behavior: replace) under a new hashed name", ok, why)


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
    check(
        "compose: the guard waits for InvokeAI's database on a first start (db_wait_ms > 0)",
        int(guard.get("environment", {}).get("INVOKE_GUARD_DB_WAIT_MS") or 0) > 0,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kubernetes-version", required=True)
    p.add_argument("--kubernetes-validate", required=True)
    p.add_argument("--compose-schema", required=True)
    p.add_argument("--kustomize", required=True)
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
