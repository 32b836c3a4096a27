#!/usr/bin/env bash
# Runs transferd: starts the missing local services, builds the guest and the host, migrates
# and serves on ${TRANSFERD_LISTEN:-127.0.0.1:8080}. Extra arguments go to `transferd serve`.
set -euo pipefail
source "$(dirname "$0")/env.sh"

"$TRANSFERD_ROOT/scripts/services.sh"
log "building the guest (wasm32-wasip2) and the host"
build_guest
cargo build --release --quiet -p transferd --manifest-path "$TRANSFERD_ROOT/Cargo.toml"

if [ -z "${TRANSFERD_ADMIN_TOKEN:-}" ]; then
  TRANSFERD_ADMIN_TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  log "no TRANSFERD_ADMIN_TOKEN set; this run's admin token is: $TRANSFERD_ADMIN_TOKEN"
fi
export TRANSFERD_ADMIN_TOKEN
export TRANSFERD_LISTEN="${TRANSFERD_LISTEN:-127.0.0.1:8080}"
exec "$CARGO_TARGET_DIR/release/transferd" serve "$@"
