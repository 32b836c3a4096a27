#!/usr/bin/env bash
# Runs every benchmark in turn (never two at once: they would measure each other) and writes
# a markdown report with the date, the machine and the commit, then prints it:
#   guest call (fresh, reused, native), HTTP API (POST at 1/16/64/256 connections, GET, POST →
#   settled, CPU µs per transfer per process), settlement into PostgreSQL, and the durable
#   broker's cost (memory vs SQLite storage).
# TRANSFERD_BENCH_SECONDS sets each HTTP run's length (default 10; 5 gives a ~6 minute run);
# TRANSFERD_BENCH_REPORT the report's path (default docs/benchmarks.md).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"
report="${TRANSFERD_BENCH_REPORT:-$TRANSFERD_ROOT/docs/benchmarks.md}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Runs one benchmark script, keeping what it printed (its progress lines go to stderr).
run() {
  local name=$1 script=$2
  log "running $name"
  "$TRANSFERD_ROOT/scripts/$script" >"$work/$name.txt"
}

run guest bench-guest.sh
run http bench-http.sh
run settlement bench-settlement.sh
run broker bench-broker.sh

cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
memory_gib="$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)"
{
  echo "# Benchmarks"
  echo
  echo "Written by \`./scripts/bench.sh\` on $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD)"
  echo "on $(nproc) cores ($cpu_model), $memory_gib GiB, every service local. Rerun it to refresh this file."
  echo
  echo "## Guest call (\`scripts/bench-guest.sh\`)"
  echo
  echo '```'
  cat "$work/guest.txt"
  echo '```'
  echo
  echo "## HTTP API (\`scripts/bench-http.sh\`, ${TRANSFERD_BENCH_SECONDS:-10} s per run)"
  echo
  cat "$work/http.txt"
  echo
  echo "## Settlement into PostgreSQL, fsync on (\`scripts/bench-settlement.sh\`)"
  echo
  echo '```'
  cat "$work/settlement.txt"
  echo '```'
  echo
  echo "## The durable broker's cost (\`scripts/bench-broker.sh\`)"
  echo
  echo '```'
  cat "$work/broker.txt"
  echo '```'
} >"$report"
log "wrote $report"
cat "$report"
