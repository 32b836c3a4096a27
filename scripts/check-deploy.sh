#!/usr/bin/env bash
# Checks the deployment files (compose.yaml, Dockerfile, deploy/kubernetes) without building or starting anything;
# scripts/test.sh runs it. Each check runs when its tool is here and is skipped with a message
# when it is not; a check that runs and fails fails this script.
#
# - `docker compose config`: compose.yaml against the Compose specification. A docker client is
#   enough (it reads the file and needs no engine), but it must have the compose subcommand.
# - python3 with PyYAML: what the specification cannot say: the seven services are there, every
#   `service_healthy` dependency has a health check, the API replicas run no settlement worker
#   and share one JWT secret and admin token, no host port is published twice.
# - hadolint on the Dockerfile.
# - the Kubernetes manifests (deploy/kubernetes), rendered and validated: scripts/check-manifests.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"

if ! command -v docker >/dev/null; then
  log "compose.yaml: docker compose config skipped (docker is not installed)"
elif ! docker compose version >/dev/null 2>&1; then
  log "compose.yaml: docker compose config skipped (this docker has no compose subcommand: the Compose plugin is missing)"
else
  docker compose -f compose.yaml config --quiet
  docker compose -f compose.yaml -f compose.sasl-ssl.yaml config --quiet
  log "compose.yaml, compose.sasl-ssl.yaml: docker compose config passed"
fi

if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  log "compose.yaml: structure check skipped (needs python3 with PyYAML)"
else
  python3 - compose.yaml <<'EOF'
import sys

import yaml

path = sys.argv[1]
with open(path) as file:
    services = yaml.safe_load(file)["services"]  # safe_load resolves the `<<` merge keys
problems = []

expected = {"postgres", "redis", "kafka", "transferd-1", "transferd-2", "worker", "worker-standby"}
for name in sorted(expected - services.keys()):
    problems.append(f"no service {name}")

published = {}
for name, service in services.items():
    if "image" not in service and "build" not in service:
        problems.append(f"{name}: neither image nor build")
    depends_on = service.get("depends_on", {})
    # The short form (a list of names) waits for nothing; this file uses the long one.
    if isinstance(depends_on, dict):
        for dependency, how in depends_on.items():
            if dependency not in services:
                problems.append(f"{name}: depends on {dependency}, which is not a service")
            elif (how or {}).get("condition") == "service_healthy" and not services[dependency].get("healthcheck"):
                problems.append(f"{name}: waits for {dependency} to be healthy, which has no health check")
    for port in service.get("ports", []):
        host_side = str(port).rsplit(":", 1)[0]
        if host_side in published:
            problems.append(f"{name}: host port {host_side} is already published by {published[host_side]}")
        published[host_side] = name

replicas = [services[name] for name in ("transferd-1", "transferd-2") if name in services]
for replica in replicas:
    environment = replica.get("environment") or {}
    if str(environment.get("TRANSFERD_RUN_WORKER")).lower() != "false":
        problems.append("an API replica runs a settlement worker (TRANSFERD_RUN_WORKER is not false)")
    if not replica.get("healthcheck"):
        problems.append("an API replica has no health check")
for setting in ("TRANSFERD_JWT_SECRET", "TRANSFERD_ADMIN_TOKEN"):
    values = {(replica.get("environment") or {}).get(setting) for replica in replicas}
    if len(values) != 1 or None in values:
        problems.append(f"the API replicas do not share one {setting}")
for name in ("worker", "worker-standby"):
    if name in services and services[name].get("command") != ["worker"]:
        problems.append(f"the {name} service does not run `transferd worker`")
    if name in services and not services[name].get("healthcheck"):
        problems.append(f"the {name} service has no health check")

for problem in problems:
    print(f"{path}: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
  log "compose.yaml: structure check passed"
  python3 - compose.yaml compose.sasl-ssl.yaml <<'EOF'
import sys

import yaml

base = yaml.safe_load(open(sys.argv[1]))["services"]
override = yaml.safe_load(open(sys.argv[2]))["services"]
problems = []
for name in sorted(set(base) - set(override)):
    if name.startswith(("transferd", "worker")):
        problems.append(f"{name} does not get the SASL_SSL client settings")
for name, service in override.items():
    if name not in base and name != "kafka-certs":
        problems.append(f"{name} is not a service of compose.yaml")
    environment = service.get("environment") or {}
    if name.startswith(("transferd", "worker")):
        if environment.get("TRANSFERD_KAFKA_CLIENT_SECURITY_PROTOCOL") != "SASL_SSL":
            problems.append(f"{name} does not connect with SASL_SSL")
        if not environment.get("TRANSFERD_KAFKA_CLIENT_SSL_CA_LOCATION"):
            problems.append(f"{name} does not verify the broker's certificate against a CA")
if "SASL_SSL" not in str(override.get("kafka", {}).get("environment", {}).get("KAFKA_LISTENERS")):
    problems.append("the broker does not listen with SASL_SSL")
for problem in problems:
    print(f"{sys.argv[2]}: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
  log "compose.sasl-ssl.yaml: structure check passed"
fi

if ! command -v hadolint >/dev/null; then
  log "Dockerfile: hadolint skipped (not installed)"
else
  hadolint Dockerfile
  log "Dockerfile: hadolint passed"
fi

# Every setting the deployment files give transferd is one transferd reads: docs/configuration.md
# is generated from the code (a test keeps it current), so a name missing there is a typo or a
# setting that was renamed, which transferd would silently ignore.
python3 - docs/configuration.md compose.yaml compose.sasl-ssl.yaml deploy <<'EOF'
import pathlib
import re
import sys

known = set(re.findall(r"^### `((?:TRANSFERD|OTEL)_[A-Z0-9_]+)`", open(sys.argv[1]).read(), re.M))
families = ("TRANSFERD_KAFKA_CLIENT_", "TRANSFERD_KAFKA_PRODUCER_", "TRANSFERD_KAFKA_CONSUMER_")
paths = []
for name in sys.argv[2:]:
    path = pathlib.Path(name)
    paths += sorted(path.rglob("*.yaml")) + sorted(path.rglob("*.example")) if path.is_dir() else [path]
problems = []
for path in paths:
    for setting in sorted(set(re.findall(r"\b((?:TRANSFERD|OTEL)_[A-Z0-9_]+)", path.read_text()))):
        if setting not in known and not setting.startswith(families):
            problems.append(f"{path}: {setting} is not a setting transferd reads (docs/configuration.md)")
for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
log "deployment files: every setting they name is one transferd reads"

"$TRANSFERD_ROOT/scripts/check-manifests.sh"
