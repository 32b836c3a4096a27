#!/usr/bin/env bash
# Only the fault test (./scripts/test.sh runs it too): steady load while Redis, PostgreSQL and
# a private SQLite-backed broker are really stopped and started and transferd is SIGKILLed,
# then every invariant; prints the figures. It stops the shared PostgreSQL and Redis, so run
# nothing else against them meanwhile.
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
# --workspace, as in scripts/test.sh: the same features, so nothing is built again.
cargo test --release --quiet --workspace --test faults -- --nocapture
