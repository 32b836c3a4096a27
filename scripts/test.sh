#!/usr/bin/env bash
# Runs the tests against real PostgreSQL, Redis and Tansu (started if missing).
#
#   ./scripts/test.sh                       everything, as CI runs it: formatting and lints, the
#                                           guest's unit and property tests, the host's unit
#                                           tests, the end-to-end tests (the fault test among
#                                           them) and the API fuzzing
#   ./scripts/test.sh <cargo test args>     the same checks, then only the tests they name
#                                           (`--test e2e -- guard::`, `-p transferd-guest`)
#   ./scripts/test.sh --faults              only the fault test: steady load while Redis,
#                                           PostgreSQL and a private SQLite-backed broker are
#                                           really stopped and started and transferd is
#                                           SIGKILLed, then every invariant; prints the figures.
#                                           It stops the shared PostgreSQL and Redis, so run
#                                           nothing else against them meanwhile.
#   ./scripts/test.sh --soak                the soak (not part of the full run): SOAK_REQUESTS
#                                           transfers (default 52,000) while the settlement
#                                           worker and the broker are each SIGKILLed SOAK_KILLS
#                                           times (default 3), then every invariant of the fault
#                                           test; prints the figures. The broker is a private
#                                           Tansu with SQLite storage that the test starts and
#                                           kills. SOAK_LIMIT_SECS bounds the run (default 1,800).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"

# The fault test or the soak alone: the services, the guest and the release host they start
# (TRANSFERD_BIN), then the one test. --workspace, as in the full run below: the same
# features, so nothing is built again.
process_test() {
  "$TRANSFERD_ROOT/scripts/services.sh"
  log "building the guest and the host"
  build_guest
  cargo build --release --quiet -p transferd
  export TRANSFERD_BIN="$CARGO_TARGET_DIR/release/transferd"
  case "$1" in
    --faults)
      log "running the fault test"
      exec cargo test --release --quiet --workspace --test faults -- --nocapture
      ;;
    --soak)
      log "soaking: ${SOAK_REQUESTS:-52000} transfers, worker and broker each killed ${SOAK_KILLS:-3} times"
      exec cargo test --release --quiet --workspace --test e2e -- --ignored --nocapture --exact \
        soak::soak_with_worker_and_broker_kills
      ;;
  esac
}

case "${1:-}" in
  --faults | --soak)
    if [ $# -ne 1 ]; then
      log "usage: $0 [--faults | --soak | <cargo test arguments>]"
      exit 2
    fi
    # The fault test stops and starts a broker backed by SQLite; the soak starts its own.
    if [ "$1" = --faults ]; then export TRANSFERD_BROKER_STORAGE=sqlite; fi
    process_test "$1"
    ;;
esac

# The shared broker runs in memory mode for tests: fast, and no test depends on what an
# earlier run left. Tests of durability start private SQLite brokers of their own.
export TRANSFERD_BROKER_STORAGE="${TRANSFERD_BROKER_STORAGE:-memory}"
"$TRANSFERD_ROOT/scripts/services.sh"

log "checking formatting"
cargo fmt --all --check

log "checking that the binary, its crash-points copy and the tests share their dependencies' builds"
"$TRANSFERD_ROOT/scripts/check-features.sh"

log "checking the deployment files (compose.yaml, Dockerfile, Kubernetes manifests; each check skipped when its tool is missing)"
"$TRANSFERD_ROOT/scripts/check-deploy.sh"

log "building the guests (wasm32-wasip2)"
build_guest
step "building the panicking test guest" \
  env --chdir=tests/guests/panicking cargo build --release --target wasm32-wasip2 --quiet
# Their own target directories: building them rebuilds the guest crate without its export, which
# in the shared directory would overwrite transferd_guest.wasm.
step "building the strict test guest" \
  env --chdir=tests/guests/strict CARGO_TARGET_DIR="$CARGO_TARGET_DIR/strict-guest" cargo build --release --target wasm32-wasip2 --quiet
step "building the hostile test guest" \
  env --chdir=tests/guests/hostile CARGO_TARGET_DIR="$CARGO_TARGET_DIR/hostile-guest" cargo build --release --target wasm32-wasip2 --quiet
step "building the clock test guest" \
  env --chdir=tests/guests/clock CARGO_TARGET_DIR="$CARGO_TARGET_DIR/clock-guest" cargo build --release --target wasm32-wasip2 --quiet
step "building the 0.1.0 test guest" \
  env --chdir=tests/guests/v0_1 CARGO_TARGET_DIR="$CARGO_TARGET_DIR/v0-1-guest" cargo build --release --target wasm32-wasip2 --quiet
step "building the 0.2.0 test guest" \
  env --chdir=tests/guests/v0_2 CARGO_TARGET_DIR="$CARGO_TARGET_DIR/v0-2-guest" cargo build --release --target wasm32-wasip2 --quiet
step "building the velocity test guest" \
  env --chdir=tests/guests/velocity CARGO_TARGET_DIR="$CARGO_TARGET_DIR/velocity-guest" cargo build --release --target wasm32-wasip2 --quiet
export TRANSFERD_TEST_PANICKING_GUEST="$CARGO_TARGET_DIR/wasm32-wasip2/release/transferd_test_guest_panicking.wasm"
export TRANSFERD_TEST_STRICT_GUEST="$CARGO_TARGET_DIR/strict-guest/wasm32-wasip2/release/transferd_test_guest_strict.wasm"
export TRANSFERD_TEST_HOSTILE_GUEST="$CARGO_TARGET_DIR/hostile-guest/wasm32-wasip2/release/transferd_test_guest_hostile.wasm"
export TRANSFERD_TEST_CLOCK_GUEST="$CARGO_TARGET_DIR/clock-guest/wasm32-wasip2/release/transferd_test_guest_clock.wasm"
export TRANSFERD_TEST_V0_1_GUEST="$CARGO_TARGET_DIR/v0-1-guest/wasm32-wasip2/release/transferd_test_guest_v0_1.wasm"
export TRANSFERD_TEST_V0_2_GUEST="$CARGO_TARGET_DIR/v0-2-guest/wasm32-wasip2/release/transferd_test_guest_v0_2.wasm"
export TRANSFERD_TEST_VELOCITY_GUEST="$CARGO_TARGET_DIR/velocity-guest/wasm32-wasip2/release/transferd_test_guest_velocity.wasm"

# From here on the workspace's crates are compiled by clippy's driver with warnings denied
# (scripts/clippy-rustc.sh): each build below lints what it compiles, so the host with and
# without crash points, the benchmarks and examples, and every test target are linted, as
# `cargo clippy --all-targets -- -D warnings` would, without a check build of every dependency.
export RUSTC_WORKSPACE_WRAPPER="$TRANSFERD_ROOT/scripts/clippy-rustc.sh"

log "building the host, and a copy with crash points for the crash tests"
# Both builds stay cached (features change the artifacts' hashes), so after the first run
# the pair costs nothing. The copy goes through a rename: a crash binary still running from
# an earlier run must not make the copy fail.
step "building the host with crash points" \
  cargo build --release --quiet -p transferd --features crash-points
cp "$CARGO_TARGET_DIR/release/transferd" "$CARGO_TARGET_DIR/release/transferd-crash-points.new"
mv "$CARGO_TARGET_DIR/release/transferd-crash-points.new" "$CARGO_TARGET_DIR/release/transferd-crash-points"
export TRANSFERD_CRASH_BIN="$CARGO_TARGET_DIR/release/transferd-crash-points"
step "building the host (transferd, release)" \
  cargo build --release --quiet -p transferd
export TRANSFERD_BIN="$CARGO_TARGET_DIR/release/transferd"
# The binary users run must not carry the crash points.
if grep -q TRANSFERD_CRASH_AT "$TRANSFERD_BIN"; then
  log "the release binary contains crash points"
  exit 1
fi

step "building (and linting) the benchmarks and examples" \
  cargo build --release --quiet --benches --examples

# Checkouts at other paths share the target directory and cargo reuses the host's build script
# for all of them, so the script must read the vectors of the checkout it runs for: run the
# newest one for a scratch checkout holding one invariant vector and check what it embedded.
log "checking that the host's build script reads the checkout it runs for"
build_script="$(ls -t "$CARGO_TARGET_DIR"/release/build/transferd-*/build-script-build | head -n 1)"
scratch="$(mktemp -d)"
mkdir -p "$scratch/host" "$scratch/tests/vectors" "$scratch/out"
printf '{"invariant": true}\n' >"$scratch/tests/vectors/scratch-only.json"
CARGO_MANIFEST_DIR="$scratch/host" OUT_DIR="$scratch/out" "$build_script" >/dev/null
if [ "$(grep -c 'include_str!' "$scratch/out/invariant_vectors.rs")" != 1 ] \
  || ! grep -q '"scratch-only.json"' "$scratch/out/invariant_vectors.rs"; then
  log "the host's build script embedded another checkout's vectors: $scratch/out/invariant_vectors.rs"
  exit 1
fi
rm -rf "$scratch"

log "checking the conformance vectors against the native guest logic and under jco"
cargo run --release --quiet -p transferd-guest --example vectors -- tests/vectors
cargo run --release --quiet -p transferd-test-guest-velocity --example vectors -- tests/guests/velocity/vectors
"$TRANSFERD_ROOT/tests/jco/install.sh" >/dev/null
node tests/jco/run.mjs
TRANSFERD_GUEST="$TRANSFERD_TEST_VELOCITY_GUEST" node tests/jco/run.mjs tests/guests/velocity/vectors

log "installing the browser tests' chromium and npm packages (the status page test)"
"$TRANSFERD_ROOT/tests/browser/install.sh"

log "running the tests"
output="$TRANSFERD_STATE_DIR/test-output.txt"
# With arguments (`--test e2e -- guard::`, `-p transferd-guest`), only what they name: `--tests` beside
# them would run every test binary anyway.
if [ $# -gt 0 ]; then
  cargo test --release "$@" 2>&1 | tee "$output"
else
  cargo test --release --workspace --lib --bins --tests 2>&1 | tee "$output"
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "all: %d passed, %d failed\n", passed, failed }' "$output"

log "fuzzing the HTTP API against /openapi.json (schemathesis, bounded by TRANSFERD_API_FUZZ_SECONDS)"
"$TRANSFERD_ROOT/scripts/api-fuzz.sh"
