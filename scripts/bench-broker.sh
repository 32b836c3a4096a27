#!/usr/bin/env bash
# Durability benchmark: POST /transfers latency with the broker on memory vs SQLite storage.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$TRANSFERD_ROOT/scripts/services.sh"
cd "$TRANSFERD_ROOT"
build_guest
cargo build --release --quiet -p transferd
export TRANSFERD_BIN="$CARGO_TARGET_DIR/release/transferd"
cargo bench --quiet -p transferd-e2e --bench broker
