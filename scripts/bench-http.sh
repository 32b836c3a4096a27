#!/usr/bin/env bash
# HTTP benchmark: POST /transfers with wrk at 1, 16, 64 and 256 connections (authentication and
# idempotency keys on), POST → settled latency at half the 64-connection rate, and
# GET /transfers/{id}; CPU time per accepted transfer over transferd, the broker, Redis and
# PostgreSQL. Prints a markdown table. TRANSFERD_BENCH_SECONDS sets each run's length (10).
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$TRANSFERD_ROOT/scripts/services.sh"
cd "$TRANSFERD_ROOT"
command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
build_guest
cargo build --release --quiet -p transferd
# A copy: a build elsewhere must not replace the binary under a running benchmark. Copied
# beside it and renamed over it, since the last run's transferd may still be exiting from the
# old file (writing into a running executable fails with "Text file busy").
export TRANSFERD_BIN="$TRANSFERD_STATE_DIR/transferd-bench"
cp "$CARGO_TARGET_DIR/release/transferd" "$TRANSFERD_BIN.$$"
mv -f "$TRANSFERD_BIN.$$" "$TRANSFERD_BIN"
log "benchmarking the HTTP API (about $(( ${TRANSFERD_BENCH_SECONDS:-10} * 6 + 30 )) s)"
cargo bench --quiet -p transferd-e2e --bench http
