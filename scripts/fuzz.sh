#!/usr/bin/env bash
# Fuzzes the JSON body reader and the amount parser (fuzz/, cargo-fuzz and libFuzzer) for a
# bounded time per target, and prints how many inputs each target ran.
#
#   scripts/fuzz.sh [seconds-per-target]      (default 60)
#
# Exits non-zero when a target crashes (a panic is a crash: a disagreement with the reference
# is an assertion). The input that crashed is kept in fuzz/artifacts/TARGET/; replay it with
# `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...` from fuzz/. Each target's corpus
# grows in fuzz/corpus/TARGET/ and is reused by the next run.
set -euo pipefail
source "$(dirname "$0")/env.sh"

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  log "usage: $0 [seconds-per-target], a whole number of seconds above 0"
  exit 2
fi
targets=(body_reader amount)

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# libFuzzer needs unstable compiler flags (coverage counters, sanitizers): the nightly
# toolchain when rustup has one, else stable allowed to take them.
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
  log "toolchain: $(rustc +nightly --version)"
else
  export RUSTC_BOOTSTRAP=1
  log "toolchain: $(rustc --version), with RUSTC_BOOTSTRAP=1"
fi

# Its own target directory: the fuzz build's flags would otherwise rebuild the workspace's.
# cargo-fuzz builds optimised with debug assertions and overflow checks, under AddressSanitizer.
fuzz_target_dir="$CARGO_TARGET_DIR/fuzz"
logs="$TRANSFERD_STATE_DIR/fuzz"
mkdir -p "$logs"
cd "$TRANSFERD_ROOT/fuzz"

log "building ${targets[*]} into $fuzz_target_dir"
cargo "${toolchain[@]}" fuzz build --target-dir "$fuzz_target_dir"

declare -A runs speed outcome
failed=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  output="$logs/$target.log"
  command=(cargo "${toolchain[@]}" fuzz run --target-dir "$fuzz_target_dir" "$target"
    "corpus/$target" -- "-max_total_time=$seconds" -print_final_stats=1
    "-dict=dictionaries/$target.dict")
  log "running: ${command[*]}"
  if "${command[@]}" >"$output" 2>&1; then
    outcome[$target]=ok
  else
    outcome[$target]="CRASHED (exit $?)"
    failed=1
    # The panic and the input that caused it, without the rest of the run's chatter.
    grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written" "$output" >&2 || tail -40 "$output" >&2
  fi
  # libFuzzer's closing statistics (-print_final_stats): "stat::number_of_executed_units: N".
  runs[$target]=$(awk '$1 == "stat::number_of_executed_units:" { print $2 }' "$output" | tail -1)
  speed[$target]=$(awk '$1 == "stat::average_exec_per_sec:" { print $2 }' "$output" | tail -1)
done

echo
echo "fuzzing summary (${seconds}s per target; logs in $logs):"
for target in "${targets[@]}"; do
  printf '  %-12s %12s runs  %8s runs/s  %s\n' "$target" "${runs[$target]:-?}" \
    "${speed[$target]:-?}" "${outcome[$target]}"
done
exit "$failed"
