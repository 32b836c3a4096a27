#!/usr/bin/env bash
# The soak (not part of ./scripts/test.sh): SOAK_REQUESTS transfers (default 52,000) while the
# settlement worker and the broker are each SIGKILLed SOAK_KILLS times (default 3), then every
# invariant of the fault test; prints the figures. The broker is a private Tansu with SQLite
# storage that the test starts and kills. SOAK_LIMIT_SECS bounds the run (default 1,800).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"

"$TRANSFERD_ROOT/scripts/services.sh"

log "building the guest and the host"
build_guest
cargo build --release --quiet -p transferd
export TRANSFERD_BIN="$CARGO_TARGET_DIR/release/transferd"

log "soaking: ${SOAK_REQUESTS:-52000} transfers, worker and broker each killed ${SOAK_KILLS:-3} times"
# --workspace, as in scripts/test.sh: the same features, so nothing is built again.
cargo test --release --quiet --workspace --test e2e -- --ignored --nocapture --exact soak::soak_with_worker_and_broker_kills
