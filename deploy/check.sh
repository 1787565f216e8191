#!/usr/bin/env bash
# Offline checks of the deployment kit: the Dockerfile, deploy/compose.yaml with its
# Prometheus and Grafana files, and the Kubernetes manifests in deploy/k8s/. Nothing
# here needs a Docker daemon, a cluster or the network once its tools are installed;
# run from anywhere: bash deploy/check.sh
#
# What it installs when missing: promtool (Debian's prometheus package), and in a
# virtualenv of its own check-jsonschema (which ships the Compose specification's
# schema) and kubernetes-validate (which ships the Kubernetes API's schemas).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned, so a new schema release cannot turn a green run red by itself.
CHECK_JSONSCHEMA=check-jsonschema==0.39.0
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
# The oldest Kubernetes the manifests support (the preStop sleep action is 1.30's)
# and the newest the schemas know.
K8S_VERSIONS=(1.30.0 1.37.0)

venv=${CITYPARK_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/citypark/deploy-check-venv}
stamp="$venv/.installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "$CHECK_JSONSCHEMA $KUBERNETES_VALIDATE" ]; then
  echo "== installing $CHECK_JSONSCHEMA $KUBERNETES_VALIDATE in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$CHECK_JSONSCHEMA" "$KUBERNETES_VALIDATE"
  echo "$CHECK_JSONSCHEMA $KUBERNETES_VALIDATE" >"$stamp"
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "== promtool not on PATH: installing Debian's prometheus"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
fi

echo "== compose: the Compose specification's schema"
# Docker Compose itself is the stronger check where it is installed (it also resolves
# the file as `up` would); the schema runs either way.
if docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/compose.yaml config --quiet
  echo "docker compose config: ok"
else
  echo "(docker compose is not installed here: schema and cross-references only)"
fi
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml

echo "== prometheus: promtool check config (and the rule files it loads)"
promtool check config deploy/prometheus-compose.yml deploy/prometheus.yml

echo "== k8s: the Kubernetes API's schemas, strict (unknown fields are errors)"
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
if command -v kubectl >/dev/null 2>&1; then
  # What `kubectl apply -k` would send, names, namespace and labels included.
  kubectl kustomize deploy/k8s >"$rendered"
else
  echo "(kubectl is not installed here: the files as written, without kustomize)"
  for resource in $("$venv/bin/python" -c '
import sys, yaml
print(" ".join(yaml.safe_load(open("deploy/k8s/kustomization.yaml"))["resources"]))'); do
    printf -- '---\n' >>"$rendered"
    cat "deploy/k8s/$resource" >>"$rendered"
  done
fi
for version in "${K8S_VERSIONS[@]}"; do
  # The ServiceMonitor is a CRD, without a schema here: check_refs.py checks it.
  "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "$version" "$rendered"
  echo "kubernetes $version: ok"
done

echo "== cross-references: the files against each other and against the binary"
"$venv/bin/python" deploy/check_refs.py
