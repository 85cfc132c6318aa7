#!/usr/bin/env bash
# Validates the Kubernetes manifests under k8s/ offline, against the API schemas bundled with
# kubernetes-validate (installed from PyPI when missing), in strict mode (unknown fields are
# errors; so are kinds it has no schema for). Then checks what the schemas cannot:
#   - every kustomization lists existing files, and every manifest of its directory; every
#     Secret a workload mounts comes from its kustomization's secretGenerator, whose sources
#     are git-ignored;
#   - Portcullis workloads use the compose lab's image (portcullis:dev, IfNotPresent), have
#     /healthz and /readyz probes on the diagnostic port and resource requests and limits; the
#     lab database (k8s/postgres) uses portcullis-postgres:dev with pg_isready probes;
#   - the root auth service is highly available: a Deployment of 2+ replicas with a
#     PodDisruptionBudget (minAvailable >= 1), its storage PostgreSQL with the connection string
#     from a Secret (never in a manifest, argv or env value), the CA key-encryption key from a
#     Secret, at the path its config names;
#   - the ConfigMaps' service configs use the same keys as the compose lab's (docker/lab/), and
#     the compose lab runs two root auth replicas on its PostgreSQL container.
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
        for e in g.get("envs", []) + g.get("files", []):
            ignore = os.path.join(d, ".gitignore")
            if not (os.path.exists(ignore) and e in open(ignore).read().split()):
                err(f"{kfile}: generated secret source {e} must be git-ignored in {ignore}")
    # Every Secret a workload of this directory mounts is generated here.
    generated = {g["name"] for g in k.get("secretGenerator", [])}
    for r in listed:
        for doc in docs.get(os.path.join(d, r), []):
            if doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
                continue
            for v in doc["spec"]["template"]["spec"].get("volumes", []):
                name = v.get("secret", {}).get("secretName")
                if name and name not in generated:
                    err(f"{kfile}: {doc['kind']} {doc['metadata']['name']} mounts Secret {name}, which no secretGenerator makes")

# Workloads.
for path, items in docs.items():
    if path.startswith("k8s/jaeger/"):
        continue
    for doc in items:
        if doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        name = f"{path}: {doc['kind']} {doc['metadata']['name']}"
        database = path.startswith("k8s/postgres/")
        for c in doc["spec"]["template"]["spec"]["containers"]:
            want_image = "portcullis-postgres:dev" if database else "portcullis:dev"
            if c.get("image") != want_image:
                err(f"{name}: image {c.get('image')!r}, expected {want_image} (the compose lab's)")
            if c.get("imagePullPolicy") != "IfNotPresent":
                err(f"{name}: imagePullPolicy must be IfNotPresent (the image is loaded, not pulled)")
            if database:
                for probe in ("livenessProbe", "readinessProbe"):
                    cmd = c.get(probe, {}).get("exec", {}).get("command", [])
                    if not cmd or not cmd[0].endswith("/pg_isready"):
                        err(f"{name}: {probe} must run pg_isready, has {cmd!r}")
            else:
                for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    got = c.get(probe, {}).get("httpGet", {}).get("path")
                    if got != want:
                        err(f"{name}: {probe} must GET {want} on the diagnostic port, has {got!r}")
            # Secrets never on a command line or in a literal environment value.
            literal = " ".join(c.get("command", []) + c.get("args", []) + [str(e.get("value", "")) for e in c.get("env", [])])
            if re.search(r"postgres(ql)?://[^ ]*@", literal) or "PGPASSWORD" in literal:
                err(f"{name}: a database credential in argv or env; mount it from a Secret")
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

# The root auth service: replicas, disruption budget, storage and key from Secrets.
root = [d for p in ("k8s/root/auth.yaml", "k8s/root/config.yaml") for d in docs.get(p, [])]
auth = [d for d in root if d.get("kind") == "Deployment" and d["metadata"]["name"] == "portcullis-auth"]
if not auth:
    err("k8s/root/auth.yaml: no Deployment portcullis-auth (the root auth must be a Deployment of replicas)")
else:
    spec = auth[0]["spec"]
    if spec.get("replicas", 1) < 2:
        err(f"k8s/root/auth.yaml: portcullis-auth has {spec.get('replicas', 1)} replica(s), needs 2 or more")
    labels = spec["selector"]["matchLabels"]
    pdbs = [d for d in root if d.get("kind") == "PodDisruptionBudget"
            and d["spec"].get("selector", {}).get("matchLabels") == labels]
    if not pdbs or int(pdbs[0]["spec"].get("minAvailable", 0)) < 1:
        err("k8s/root/auth.yaml: portcullis-auth needs a PodDisruptionBudget with minAvailable >= 1")
    c = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["template"]["spec"]["volumes"] if "secret" in v}
    def from_secret(path, what):
        """The Secret whose mount holds `path`, or an error."""
        for vol, mp in mounts.items():
            if vol in secrets and path and path.startswith(mp.rstrip("/") + "/"):
                return secrets[vol]
        err(f"k8s/root/auth.yaml: {what} ({path!r}) is not read from a mounted Secret")
    from_secret(env.get("PORTCULLIS_KEK_SOURCE"), "the CA key-encryption key")
    cms = [d for d in docs.get("k8s/root/config.yaml", []) if d.get("kind") == "ConfigMap"]
    cfg = yaml.safe_load(cms[0]["data"]["auth.yaml"]) if cms else {}
    storage = (cfg.get("teleport") or {}).get("storage") or {}
    conn = str(storage.get("conn_string", ""))
    if storage.get("type") != "postgresql" or not conn.startswith("/"):
        err(f"k8s/root/config.yaml: auth storage must be postgresql with conn_string the path of a mounted Secret file, has {storage.get('type')!r}")
    else:
        from_secret(conn, "the storage connection string")
    kek = (cfg.get("auth_service") or {}).get("ca_key_encryption_key_file")
    if kek != env.get("PORTCULLIS_KEK_FILE"):
        err(f"k8s/root: auth_service.ca_key_encryption_key_file {kek!r} is not where the entrypoint copies the key ({env.get('PORTCULLIS_KEK_FILE')!r})")

# The compose lab runs the same images, and two root auth replicas on its PostgreSQL.
with open("docker-compose.yml") as f:
    compose = yaml.safe_load(f)
images = {"postgres": "${PORTCULLIS_POSTGRES_IMAGE:-portcullis-postgres:dev}"}
for svc, spec in compose["services"].items():
    want = images.get(svc, "${PORTCULLIS_IMAGE:-portcullis:dev}")
    if svc != "jaeger" and spec.get("image") != want:
        err(f"docker-compose.yml: service {svc} runs {spec.get('image')!r}, not {want}")
replicas = [s for s, spec in compose["services"].items()
            if spec.get("environment", {}).get("PORTCULLIS_CONFIG_TEMPLATE") == "/etc/portcullis/lab/root-auth.yaml"]
if len(replicas) < 2:
    err(f"docker-compose.yml: the root cluster runs {len(replicas)} auth replica(s), expected 2")
with open("docker/lab/root-auth.yaml") as f:
    lab_storage = (load_config(f.read()).get("teleport") or {}).get("storage") or {}
if lab_storage.get("type") != "postgresql":
    err("docker/lab/root-auth.yaml: the root auth replicas must use PostgreSQL storage")
for s in replicas:
    kek = compose["services"][s]["environment"].get("PORTCULLIS_KEK_FILE")
    if not kek or not any(v.split(":")[0] == "root-kek" for v in compose["services"][s].get("volumes", [])):
        err(f"docker-compose.yml: {s} must take the shared key-encryption key from the root-kek volume")

if errors:
    for e in errors:
        print(f"k8s-validate: {e}", file=sys.stderr)
    sys.exit(1)
print("k8s-validate: kustomizations, secrets, images, probes, resources, auth replicas and config keys consistent with the compose lab")
PY
