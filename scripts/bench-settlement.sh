#!/usr/bin/env bash
# Settlement throughput into PostgreSQL (fsync on) for batch sizes 1, 100 and 1000.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$TRANSFERD_ROOT/scripts/services.sh"
cd "$TRANSFERD_ROOT"
cargo bench --quiet -p transferd --bench settlement
