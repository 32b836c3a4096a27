#!/usr/bin/env bash
# The cost of one guest decision with in-memory imports: wasmtime with a fresh instance per
# call, wasmtime with a reused instance, and the same logic compiled natively. Prints median
# and p99 per call.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"
ensure_toolchain
build_guest
cargo bench --quiet --workspace --bench guest
