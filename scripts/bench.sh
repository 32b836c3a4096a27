#!/usr/bin/env bash
# The benchmarks, one at a time (never two at once, nor beside anything heavy: they would
# measure each other). Each starts what it needs once: the local services, the guest, and a
# copy of the release host for serve (scripts/lib/bench.sh).
#
#   ./scripts/bench.sh [all]       every benchmark below but batch and ab in turn, then the report, written
#                                  into docs/performance.md between its report markers
#   ./scripts/bench.sh guest       one guest decision: wasmtime with a fresh instance, reused,
#                                  and native
#   ./scripts/bench.sh http        POST /transfers under wrk at 1, 16, 64 and 256 connections,
#                                  POST → settled, GET; CPU and work per transfer per process
#   ./scripts/bench.sh batch       POST /transfers/batch, batches of 1,000: accepted transfers/s,
#                                  CPU µs per transfer per process, batch → all settled p50/p99
#   ./scripts/bench.sh settlement  settlement into PostgreSQL (fsync on), batches of 1, 100, 1000
#   ./scripts/bench.sh history     history queries (lists, entries, balances at a moment) at p50
#                                  and p99 over a seeded ledger of 10 million transfers
#   ./scripts/bench.sh broker      the durable broker's cost: memory against SQLite storage
#   ./scripts/bench.sh swap        hot swaps on two replicas under load
#   ./scripts/bench.sh ab A B      two builds side by side in one sitting: each side a git
#                                  revision or the path of a transferd binary; compare CPU µs
#                                  per transfer, which moves least with the machine
#
# Settings: TRANSFERD_BENCH_SECONDS (each HTTP and broker-ceiling run's length, 10);
# TRANSFERD_BENCH_REPORT (the page `all` writes its report into, docs/performance.md); for
# http, TRANSFERD_BENCH_CONNECTIONS ("64" or "16,64": only those POST runs),
# TRANSFERD_BENCH_POST_ONLY=1, TRANSFERD_BENCH_BROKER=memory, TRANSFERD_BENCH_ENV ("NAME=value,…":
# transferd with other settings); for ab, TRANSFERD_BENCH_ROUNDS (3), TRANSFERD_BENCH_CONNECTIONS
# (64), and TRANSFERD_BENCH_ENV_A / TRANSFERD_BENCH_ENV_B (one side's settings, as
# TRANSFERD_BENCH_ENV: two settings of one build compare that way).
set -euo pipefail
source "$(dirname "$0")/env.sh"
source "$TRANSFERD_ROOT/scripts/lib/bench.sh"
cd "$TRANSFERD_ROOT"

command="${1:-all}"
[ $# -gt 0 ] && shift
case "$command" in
  all | guest | http | batch | settlement | history | broker | swap)
    if [ $# -gt 0 ]; then
      log "usage: $0 $command (no further arguments)"
      exit 2
    fi
    "bench_$command"
    ;;
  ab) bench_ab "$@" ;;
  *)
    log "usage: $0 [all | guest | http | batch | settlement | history | broker | swap | ab <a> <b>]"
    exit 2
    ;;
esac
