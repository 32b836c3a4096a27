#!/usr/bin/env bash
# The fault test (ignored in ./scripts/test.sh until it passes): steady load while Redis,
# PostgreSQL and the broker are really stopped and started and transferd is SIGKILLed, then
# every invariant; prints the figures. It needs the durable broker (SQLite storage), and it
# stops the shared services, so run nothing else against them meanwhile.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"

export TRANSFERD_BROKER_STORAGE=sqlite
"$TRANSFERD_ROOT/scripts/services.sh"

log "building the guest and the host"
build_guest
cargo build --release --quiet -p transferd
export TRANSFERD_BIN="$CARGO_TARGET_DIR/release/transferd"

log "running the fault test (about 2-4 minutes)"
cargo test --release --quiet -p transferd-e2e --test faults -- --ignored --nocapture
