"""Checks on rendered Steward manifests that a schema cannot express.

Usage: python policy.py RENDERED.yaml SECRET_EXAMPLE.yaml

RENDERED.yaml is one overlay's `kubectl kustomize` output. The shape is read from it: "fdb" when a
container's STEWARD_STORE is `fdb:...`, "dev" when it is `embedded:...` (given by `--store`).
Prints one line per problem, naming the object and the field, and exits 1 if there is any.
Run by .ci/deploy-check; see deploy/README.md ("CI").
"""

from __future__ import annotations

import sys
import tomllib
from typing import Any

import yaml

# The default of STEWARD_WORKER__SHUTDOWN_GRACE_SECS in the `steward` binary.
DEFAULT_SHUTDOWN_GRACE_SECS = 30
# Time the kubelet must leave after the shutdown grace for releasing leases and exiting.
RELEASE_MARGIN_SECS = 10
# Roles that run workers (and so drain on SIGTERM).
WORKER_ROLES = {"worker", "dev"}

# The key-file settings of the `steward` binary (crates/cli/src/keys.rs), by environment variable.
JWT_SIGNING = "STEWARD_AUTH__JWT_SIGNING_KEY_FILE"
JWT_VERIFY = "STEWARD_AUTH__JWT_VERIFY_KEYS_DIR"
REFRESH = "STEWARD_MODELS__REFRESH_TOKEN_KEY_FILE"
AUDIT_CHAIN = "STEWARD_MODELS__AUDIT_CHAIN_KEY_FILE"
AUDIT_SIGNING = "STEWARD_MODELS__AUDIT_SIGNING_KEY_FILE"
# A TOML array of files (public keys), e.g. '["/etc/steward/audit-verify-keys/audit-key-1.pub.pem"]'.
AUDIT_VERIFYING = "STEWARD_MODELS__AUDIT_VERIFYING_KEY_FILES"
KEY_SETTINGS = {JWT_SIGNING, JWT_VERIFY, REFRESH, AUDIT_CHAIN, AUDIT_SIGNING, AUDIT_VERIFYING}
# Per role of the FoundationDB shape: the key settings it must have, and the ones it may have.
# Anything else is refused (least privilege: a process gets only the keys it reads).
# - Every command needs the refresh-token and audit-chain HMAC keys (it opens the records).
# - Only `steward api` reads [auth]: it signs tokens at login/refresh and verifies every request.
# - The audit signing key (private): only workers sign (compact_audit_log refuses without it).
#   The API's GET /v1/audit/verify looks a segment's key id up in the signing key, then in
#   models.audit_verifying_key_files (AuditConfig::verifying_key), so public keys alone verify:
#   the API gets those and never the private key. Workers may load the public keys too (the
#   setting is shared through steward-env); `steward scheduler` needs neither, but may have both.
ROLE_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "api": ({JWT_SIGNING, JWT_VERIFY, REFRESH, AUDIT_CHAIN, AUDIT_VERIFYING}, set()),
    "worker": ({REFRESH, AUDIT_CHAIN, AUDIT_SIGNING}, {AUDIT_VERIFYING}),
    "scheduler": ({REFRESH, AUDIT_CHAIN}, {AUDIT_SIGNING, AUDIT_VERIFYING}),
}
# Roles that call LLMs (and so may get STEWARD_LLM__* settings and keys).
LLM_ROLES = {"worker", "dev"}


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def require(self, ok: bool, where: str, message: str) -> None:
        if not ok:
            self.fail(where, message)


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# The rendered ConfigMaps' data by name, for `envFrom` (set by main()).
CONFIG_MAPS: dict[str, dict[str, str]] = {}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's plain environment: `envFrom` ConfigMaps, then `env` values (which win)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref:
            prefix = src.get("prefix", "")
            env.update({prefix + k: v for k, v in CONFIG_MAPS.get(ref["name"], {}).items()})
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def file_list(r: Report, where: str, name: str, value: str) -> list[str]:
    """The paths of a `*_FILES` setting: a TOML array of strings, as the binary parses it."""
    try:
        paths = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as e:
        r.fail(where, f"env {name}={value!r} is not a TOML array of paths ({e})")
        return []
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        r.fail(where, f"env {name}={value!r} must be a TOML array of path strings, "
                      "e.g. [\"/etc/steward/audit-verify-keys/audit-key-1.pub.pem\"]")
        return []
    return paths


def key_files(r: Report, where: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """(setting, path) of every key-file setting: `*_FILE` and each path of `*_FILES`."""
    out = []
    for name, value in env.items():
        if name.endswith("_FILE") and name != "FDB_CLUSTER_FILE":
            out.append((name, value))
        elif name.endswith("_FILES"):
            out.extend((name, p) for p in file_list(r, where, name, value))
    return out


def flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def store_of(container: dict[str, Any]) -> str | None:
    return flag(container.get("args", []), "--store") or env_of(container).get("STEWARD_STORE")


def mount_for(path: str, container: dict[str, Any]) -> dict[str, Any] | None:
    """The volumeMount whose mountPath is the longest prefix directory of `path`."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def check_container(r: Report, where: str, c: dict[str, Any]) -> None:
    sc = c.get("securityContext", {})
    r.require(sc.get("allowPrivilegeEscalation") is False, where,
              "securityContext.allowPrivilegeEscalation must be false")
    r.require(sc.get("readOnlyRootFilesystem") is True, where,
              "securityContext.readOnlyRootFilesystem must be true")
    r.require(sc.get("privileged") is not True, where, "securityContext.privileged must not be true")
    r.require("ALL" in sc.get("capabilities", {}).get("drop", []), where,
              "securityContext.capabilities.drop must contain ALL")
    r.require(not sc.get("capabilities", {}).get("add"), where,
              "securityContext.capabilities.add must be empty")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for what in ("cpu", "memory"):
            r.require(what in res.get(kind, {}), where, f"resources.{kind}.{what} is missing")
    image = c.get("image", "")
    r.require("/" in image and (":" in image or "@" in image), where,
              f"image {image!r} was not set by the overlay's `images:` (registry/name:tag or @digest)")


def check_pod(r: Report, dep: dict[str, Any]) -> None:
    where = name_of(dep)
    spec = dep["spec"]["template"]["spec"]
    meta = dep["spec"]["template"].get("metadata", {})
    psc = spec.get("securityContext", {})
    r.require(psc.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot must be true")
    r.require(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, where,
              "pod securityContext.runAsUser must be a non-zero uid")
    r.require(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where,
              "pod securityContext.seccompProfile.type must be RuntimeDefault")
    r.require(spec.get("automountServiceAccountToken") is False, where,
              "automountServiceAccountToken must be false (steward never calls the Kubernetes API)")

    containers = spec.get("containers", [])
    for c in spec.get("initContainers", []):
        check_container(r, f"{where} initContainer {c['name']}", c)
    for c in containers:
        cw = f"{where} container {c['name']}"
        check_container(r, cw, c)
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            got = c.get(probe, {}).get("httpGet", {}).get("path")
            r.require(got == path, cw, f"{probe}.httpGet.path must be {path} (is {got!r})")

    # Prometheus scrape annotations point at a declared container port.
    ann = meta.get("annotations", {})
    r.require(ann.get("prometheus.io/scrape") == "true", where,
              "template annotation prometheus.io/scrape must be \"true\"")
    r.require(ann.get("prometheus.io/path") == "/metrics", where,
              "template annotation prometheus.io/path must be /metrics")
    ports = {str(p["containerPort"]) for c in containers for p in c.get("ports", [])}
    r.require(ann.get("prometheus.io/port") in ports, where,
              f"template annotation prometheus.io/port {ann.get('prometheus.io/port')!r} "
              f"is not a container port ({sorted(ports)})")

    # Workers drain on SIGTERM: the kubelet must wait longer than their shutdown grace.
    for c in containers:
        role = (c.get("args") or [""])[0]
        if role in WORKER_ROLES:
            grace = int(env_of(c).get("STEWARD_WORKER__SHUTDOWN_GRACE_SECS",
                                      DEFAULT_SHUTDOWN_GRACE_SECS))
            tgp = spec.get("terminationGracePeriodSeconds", 30)
            r.require(tgp >= grace + RELEASE_MARGIN_SECS, where,
                      f"terminationGracePeriodSeconds {tgp} must be at least the worker shutdown "
                      f"grace {grace} + {RELEASE_MARGIN_SECS} s to release leases")


def check_fdb_pod(r: Report, dep: dict[str, Any]) -> None:
    """The cluster file: a ConfigMap seed copied by an init container into a writable emptyDir."""
    where = name_of(dep)
    spec = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        store = store_of(c) or ""
        if not store.startswith("fdb:"):
            r.fail(where, f"container {c['name']} STEWARD_STORE must be fdb:<path> (is {store!r})")
            continue
        path = store[len("fdb:"):]
        env = env_of(c)
        r.require(env.get("FDB_CLUSTER_FILE") == path, where,
                  f"container {c['name']} FDB_CLUSTER_FILE must equal the store's path {path!r}")
        m = mount_for(path, c)
        if m is None:
            r.fail(where, f"container {c['name']}: no volume is mounted over {path}")
            continue
        r.require(not m.get("readOnly"), where, f"the cluster file's mount {m['mountPath']} must be writable")
        vol = volumes.get(m["name"], {})
        r.require("emptyDir" in vol, where, f"the cluster file's volume {m['name']!r} must be an emptyDir")
        seeders = [
            ic for ic in spec.get("initContainers", [])
            if any(im["name"] == m["name"] and not im.get("readOnly") for im in ic.get("volumeMounts", []))
            and any("configMap" in volumes.get(im["name"], {}) for im in ic.get("volumeMounts", []))
        ]
        r.require(bool(seeders), where,
                  f"no init container copies the cluster file from a ConfigMap into volume {m['name']!r}")
        for ic in seeders:
            cmd = " ".join(ic.get("command", []) + ic.get("args", []))
            r.require(path in cmd, where, f"init container {ic['name']} must write {path} (runs {cmd!r})")


def check_secret_refs(r: Report, dep: dict[str, Any], examples: dict[str, dict[str, Any]]) -> None:
    """Every Secret (and key) a pod uses is shown in secret.example.yaml, so the README holds."""
    where = name_of(dep)
    spec = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                keys = examples.get(ref["name"])
                r.require(keys is not None and ref["key"] in keys, where,
                          f"env {e['name']} uses secret {ref['name']}/{ref['key']}, "
                          "which deploy/base/secret.example.yaml does not show")
        env = env_of(c)
        dirs = [(n, v) for n, v in env.items() if n.endswith("_DIR")]
        for name, value in key_files(r, where, env) + dirs:
            m = mount_for(value, c)
            secret = volumes.get(m["name"], {}).get("secret") if m else None
            if secret is None:
                r.fail(where, f"env {name}={value} is not under a Secret volume mount")
                continue
            keys = examples.get(secret["secretName"])
            if keys is None:
                r.fail(where, f"Secret {secret['secretName']} is not shown in deploy/base/secret.example.yaml")
            elif not name.endswith("_DIR"):
                key = value[len(m["mountPath"].rstrip("/")) + 1:]
                r.require(key in keys, where,
                          f"env {name} reads key {key!r} of Secret {secret['secretName']}, which "
                          "deploy/base/secret.example.yaml does not show")


def check_role_keys(r: Report, dep: dict[str, Any], examples: dict[str, dict[str, Any]]) -> None:
    """Each role has the key settings it needs, none it does not read, and mounts no Secret key
    that none of its settings reads."""
    where = name_of(dep)
    spec = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec.get("containers", []):
        role = (c.get("args") or [""])[0]
        cw = f"{where} container {c['name']} (`steward {role}`)"
        env = env_of(c)
        names = {e["name"] for e in c.get("env", [])} | set(env)
        if role not in LLM_ROLES:
            for name in sorted(n for n in names if n.startswith("STEWARD_LLM__")):
                r.fail(cw, f"env {name}: only workers call LLMs; do not give `steward {role}` LLM settings or keys")
        if role not in ROLE_KEYS:
            r.fail(cw, f"unknown role {role!r}: add its key settings to ROLE_KEYS in deploy/ci/policy.py")
            continue
        required, optional = ROLE_KEYS[role]
        for name in sorted(required - names):
            r.fail(cw, f"env {name} is missing (`steward {role}` requires it)")
        for name in sorted((names & KEY_SETTINGS) - required - optional):
            r.fail(cw, f"env {name} is not read by `steward {role}`; do not give it that key (least privilege)")
        files = {path for _, path in key_files(Report(), cw, env)}
        dirs = {v.rstrip("/") for n, v in env.items() if n.endswith("_DIR")}
        for m in c.get("volumeMounts", []):
            secret = volumes.get(m["name"], {}).get("secret")
            if secret is None:
                continue
            mp = m["mountPath"].rstrip("/")
            if mp in dirs:
                continue
            items = secret.get("items")
            keys = sorted(i["path"] for i in items) if items else sorted(examples.get(secret["secretName"], ()))
            for key in keys:
                r.require(f"{mp}/{key}" in files, cw,
                          f"mounts key {key!r} of Secret {secret['secretName']} at {mp}, which no setting of "
                          f"`steward {role}` reads (mount only the keys a role needs)")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def main(rendered: str, secret_example: str) -> int:
    with open(rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(secret_example, encoding="utf-8") as f:
        examples = {
            d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("stringData", {}))
            for d in yaml.safe_load_all(f) if d and d.get("kind") == "Secret"
        }
    CONFIG_MAPS.update({d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"})
    r = Report()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if d["kind"] != "Namespace":
            r.require(bool(d.get("metadata", {}).get("namespace")), name_of(d),
                      "metadata.namespace is not set (the overlay must set `namespace:`)")
    deps = by_kind.get("Deployment", [])
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    pdbs = by_kind.get("PodDisruptionBudget", [])
    r.require(bool(deps), rendered, "no Deployment rendered")

    stores = {store_of(c) or "" for d in deps for c in d["spec"]["template"]["spec"]["containers"]}
    shape = "dev" if all(s.startswith("embedded:") for s in stores) else "fdb"

    for d in deps:
        check_pod(r, d)
    for d in deps:
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        r.require(selects(d["spec"]["selector"].get("matchLabels", {}), labels), name_of(d),
                  "spec.selector.matchLabels does not select its own pod template")

    dep_names = {d["metadata"]["name"]: d for d in deps}
    for h in hpas:
        target = h["spec"]["scaleTargetRef"]["name"]
        r.require(target in dep_names, name_of(h), f"scaleTargetRef {target!r} is not a rendered Deployment")
        if target in dep_names:
            r.require("replicas" not in dep_names[target]["spec"], f"Deployment/{target}",
                      "spec.replicas must be unset: the HorizontalPodAutoscaler owns it "
                      "(every `kubectl apply` would reset it otherwise)")
    for p in pdbs:
        sel = p["spec"]["selector"].get("matchLabels", {})
        r.require(any(selects(sel, d["spec"]["template"]["metadata"].get("labels", {})) for d in deps),
                  name_of(p), "spec.selector matches no rendered Deployment's pods")
    for s in by_kind.get("Service", []):
        sel = s["spec"].get("selector", {})
        pods = [d for d in deps if selects(sel, d["spec"]["template"]["metadata"].get("labels", {}))]
        r.require(bool(pods), name_of(s), "spec.selector matches no rendered Deployment's pods")
        for port in s["spec"].get("ports", []):
            tp = port.get("targetPort")
            named = {p.get("name") for d in pods for c in d["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
            numbered = {p["containerPort"] for d in pods for c in d["spec"]["template"]["spec"]["containers"]
                        for p in c.get("ports", [])}
            r.require(tp in named or tp in numbered, name_of(s), f"targetPort {tp!r} is no port of its pods")

    if shape == "fdb":
        roles = {}
        for d in deps:
            check_fdb_pod(r, d)
            check_secret_refs(r, d, examples)
            check_role_keys(r, d, examples)
            for c in d["spec"]["template"]["spec"]["containers"]:
                roles[(c.get("args") or [""])[0]] = d
        for role in ("api", "worker"):
            r.require(role in roles, rendered, f"no Deployment runs `steward {role}`")
        if "worker" in roles:
            wname = roles["worker"]["metadata"]["name"]
            r.require(any(h["spec"]["scaleTargetRef"]["name"] == wname for h in hpas), rendered,
                      f"no HorizontalPodAutoscaler scales {wname}")
        for d in deps:
            labels = d["spec"]["template"]["metadata"].get("labels", {})
            r.require(any(selects(p["spec"]["selector"].get("matchLabels", {}), labels) for p in pdbs),
                      name_of(d), "no PodDisruptionBudget covers its pods")
    else:
        r.require(len(deps) == 1, rendered, f"the embedded store allows one process: {len(deps)} Deployments")
        r.require(not hpas, rendered, "no HorizontalPodAutoscaler on the embedded store (one process only)")
        r.require(not pdbs, rendered, "no PodDisruptionBudget on the embedded store (it would block drains)")
        for d in deps:
            where = name_of(d)
            spec = d["spec"]
            r.require(spec.get("replicas") == 1, where, "spec.replicas must be 1 (the store holds an flock)")
            r.require(spec.get("strategy", {}).get("type") == "Recreate", where,
                      "spec.strategy.type must be Recreate (old pod gone before the new one opens the store)")
            pod = spec["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                path = (store_of(c) or "")[len("embedded:"):]
                m = mount_for(path, c)
                r.require(m is not None and "persistentVolumeClaim" in volumes.get(m["name"], {}), where,
                          f"the embedded store {path!r} must live on a PersistentVolumeClaim mount")
                claim = volumes.get(m["name"], {}).get("persistentVolumeClaim", {}).get("claimName") if m else None
                r.require(any(p["metadata"]["name"] == claim for p in by_kind.get("PersistentVolumeClaim", [])),
                          where, f"PersistentVolumeClaim {claim!r} is not rendered")

    for p in r.problems:
        print(f"policy: {rendered}: {p}")
    kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
    print(f"policy: {rendered}: shape {shape}; {kinds}; {len(r.problems)} problem(s)")
    return 1 if r.problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
