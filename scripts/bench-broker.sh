#!/usr/bin/env bash
# The broker's part: POST /transfers latency with the broker on memory vs SQLite storage
# (through an API-only transferd), then the broker's own ceiling: rdkafka alone with
# transferd's producer settings against each engine, with and without the trace header.
# TRANSFERD_BENCH_SECONDS sets each ceiling run's length (10).
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$TRANSFERD_ROOT/scripts/services.sh"
cd "$TRANSFERD_ROOT"
build_guest
cargo build --release --quiet -p transferd
export TRANSFERD_BIN="$CARGO_TARGET_DIR/release/transferd"
cargo bench --quiet -p transferd-e2e --bench broker
echo
cargo bench --quiet -p transferd-e2e --bench broker_ceiling
