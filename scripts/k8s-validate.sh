#!/usr/bin/env bash
# Validates the Kubernetes manifests under k8s/ offline, against the API schemas bundled with
# kubernetes-validate (installed from PyPI when missing), in strict mode (unknown fields are
# errors; so are kinds it has no schema for). Then checks what the schemas cannot:
#   - every kustomization lists existing files, and every manifest of its directory;
#   - Portcullis workloads use the compose lab's image (portcullis:dev, IfNotPresent), have
#     /healthz and /readyz probes on the diagnostic port and resource requests and limits;
#   - the ConfigMaps' service configs use the same keys as the compose lab's (docker/lab/).
# Exits non-zero on any problem.
# Environment: KUBE_VERSION (default 1.30.0, the oldest release it is checked against).
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE_VERSION=${KUBE_VERSION:-1.30.0}
VALIDATOR_VERSION=1.37.0

# Run as a module: no dependence on where pip puts console scripts.
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "k8s-validate: installing kubernetes-validate $VALIDATOR_VERSION from PyPI" >&2
  python3 -m pip install --quiet "kubernetes-validate==$VALIDATOR_VERSION" >&2
fi

mapfile -t manifests < <(find k8s -name '*.yaml' ! -name kustomization.yaml | sort)
[ "${#manifests[@]}" -gt 0 ] || { echo "k8s-validate: no manifests under k8s/" >&2; exit 1; }

# kubernetes-validate only warns about a kind it has no schema for (a typo in kind or
# apiVersion): count warnings as failures too.
out=$(python3 -m kubernetes_validate --strict --kubernetes-version "$KUBE_VERSION" --quiet "${manifests[@]}" 2>&1) && rc=0 || rc=$?
if [ "$rc" != 0 ] || grep -q . <<<"$out"; then
  echo "$out" >&2
  echo "k8s-validate: schema validation against Kubernetes $KUBE_VERSION failed" >&2
  exit 1
fi
echo "k8s-validate: ${#manifests[@]} files valid against Kubernetes $KUBE_VERSION (strict)"

python3 - "${manifests[@]}" <<'PY'
import glob, os, re, sys
import yaml

def load_config(text):
    """A service config with its entrypoint placeholders filled in by dummies."""
    return yaml.safe_load(re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "x", text))

errors = []
def err(msg):
    errors.append(msg)

def flat_keys(node, prefix=""):
    """Dotted paths of every mapping key (list items share their list's path)."""
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(path)
            out |= flat_keys(v, path)
    elif isinstance(node, list):
        for v in node:
            out |= flat_keys(v, prefix)
    return out

docs = {}
for path in sys.argv[1:]:
    with open(path) as f:
        docs[path] = [d for d in yaml.safe_load_all(f) if d]

# Kustomizations: existing resources, and no manifest left out.
for kfile in sorted(glob.glob("k8s/**/kustomization.yaml", recursive=True)):
    d = os.path.dirname(kfile)
    with open(kfile) as f:
        k = yaml.safe_load(f)
    listed = set(k.get("resources", []))
    for r in listed:
        if not os.path.exists(os.path.join(d, r)):
            err(f"{kfile}: resource {r} does not exist")
    for m in glob.glob(os.path.join(d, "*.yaml")):
        if os.path.basename(m) != "kustomization.yaml" and os.path.basename(m) not in listed:
            err(f"{kfile}: {os.path.basename(m)} is not listed in resources")
    for g in k.get("secretGenerator", []):
        for e in g.get("envs", []):
            ignore = os.path.join(d, ".gitignore")
            if not (os.path.exists(ignore) and e in open(ignore).read().split()):
                err(f"{kfile}: generated secret source {e} must be git-ignored in {ignore}")

# Workloads.
for path, items in docs.items():
    if path.startswith("k8s/jaeger/"):
        continue
    for doc in items:
        if doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        name = f"{path}: {doc['kind']} {doc['metadata']['name']}"
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c.get("image") != "portcullis:dev":
                err(f"{name}: image {c.get('image')!r}, expected portcullis:dev (the compose lab's)")
            if c.get("imagePullPolicy") != "IfNotPresent":
                err(f"{name}: imagePullPolicy must be IfNotPresent (the image is loaded, not pulled)")
            for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                got = c.get(probe, {}).get("httpGet", {}).get("path")
                if got != want:
                    err(f"{name}: {probe} must GET {want} on the diagnostic port, has {got!r}")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                err(f"{name}: needs resource requests and limits")

# The ConfigMaps' configs against the compose lab's files: same keys.
pairs = {
    ("k8s/root/config.yaml", "auth.yaml"): "docker/lab/root-auth.yaml",
    ("k8s/root/config.yaml", "proxy.yaml"): "docker/lab/root-proxy.yaml",
    ("k8s/leaf/config.yaml", "auth.yaml"): "docker/lab/leaf-auth.yaml",
    ("k8s/leaf/config.yaml", "proxy.yaml"): "docker/lab/leaf-proxy.yaml",
    ("k8s/leaf/config.yaml", "node.yaml"): "docker/lab/leaf-node.yaml",
    ("k8s/leaf/config.yaml", "agent.yaml"): "docker/lab/tunnel-agent.yaml",
}
for (cm_path, key), lab_path in pairs.items():
    cms = [d for d in docs.get(cm_path, []) if d.get("kind") == "ConfigMap"]
    if not cms or key not in cms[0].get("data", {}):
        err(f"{cm_path}: no ConfigMap key {key}")
        continue
    k8s_keys = flat_keys(load_config(cms[0]["data"][key]))
    with open(lab_path) as f:
        lab_keys = flat_keys(load_config(f.read()))
    if k8s_keys != lab_keys:
        err(f"{cm_path} {key} and {lab_path} differ in keys: only in k8s {sorted(k8s_keys - lab_keys)}, only in compose {sorted(lab_keys - k8s_keys)}")

# The compose lab runs the same image.
with open("docker-compose.yml") as f:
    compose = yaml.safe_load(f)
for svc, spec in compose["services"].items():
    if svc != "jaeger" and spec.get("image") != "${PORTCULLIS_IMAGE:-portcullis:dev}":
        err(f"docker-compose.yml: service {svc} runs {spec.get('image')!r}, not portcullis:dev")

if errors:
    for e in errors:
        print(f"k8s-validate: {e}", file=sys.stderr)
    sys.exit(1)
print("k8s-validate: kustomizations, images, probes, resources and config keys consistent with the compose lab")
PY
