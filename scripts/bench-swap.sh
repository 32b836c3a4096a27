#!/usr/bin/env bash
# Hot-swap benchmark: activation-to-new-version time on two replicas and latency during swaps.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$TRANSFERD_ROOT/scripts/services.sh"
cd "$TRANSFERD_ROOT"
build_guest
(cd tests/guests/strict && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/strict-guest" cargo build --release --target wasm32-wasip2 --quiet)
export TRANSFERD_TEST_STRICT_GUEST="$CARGO_TARGET_DIR/strict-guest/wasm32-wasip2/release/transferd_test_guest_strict.wasm"
cargo build --release --quiet -p transferd
export TRANSFERD_BIN="$CARGO_TARGET_DIR/release/transferd"
cargo bench --quiet -p transferd-e2e --bench swap
