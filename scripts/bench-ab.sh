#!/usr/bin/env bash
# Two builds of transferd measured side by side: POST /transfers runs of the HTTP benchmark,
# alternated A B A B … in one sitting, so that whatever else slows the machine down falls on
# both alike. Each side is a git revision (built from a scratch worktree, sharing the build
# directory) or the path of a transferd binary. Prints each run's figures and each side's
# median; compare CPU µs per transfer, which moves least with the machine.
#   ./scripts/bench-ab.sh HEAD~1 HEAD
# TRANSFERD_BENCH_ROUNDS (3), TRANSFERD_BENCH_CONNECTIONS (64), TRANSFERD_BENCH_SECONDS (10);
# TRANSFERD_BENCH_ENV_A and TRANSFERD_BENCH_ENV_B give one side other settings ("NAME=value,…",
# as TRANSFERD_BENCH_ENV does), to compare two settings of one build.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ $# -ne 2 ]; then
  log "usage: $0 <revision-or-binary-a> <revision-or-binary-b>"
  exit 2
fi
"$TRANSFERD_ROOT/scripts/services.sh"
cd "$TRANSFERD_ROOT"
command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
build_guest
rounds="${TRANSFERD_BENCH_ROUNDS:-3}"
export TRANSFERD_BENCH_CONNECTIONS="${TRANSFERD_BENCH_CONNECTIONS:-64}"
work="$(mktemp -d)"
cleanup() {
  git worktree remove --force "$work/tree" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Puts the transferd of $1 (a binary, or a revision to build) at $2.
binary_of() {
  local side=$1 out=$2
  if [ -f "$side" ]; then
    cp "$side" "$out"
    return
  fi
  git worktree add --detach --quiet "$work/tree" "$side"
  step "building transferd at $side" "warm: 1-3 min on 2 cores" \
    env --chdir="$work/tree" cargo build --release --quiet -p transferd
  cp "$CARGO_TARGET_DIR/release/transferd" "$out"
  git worktree remove --force "$work/tree"
}

binary_of "$1" "$work/transferd-a"
binary_of "$2" "$work/transferd-b"
# The benchmark itself, built once before the first run.
cargo bench --quiet -p transferd-e2e --bench http --no-run

echo "A: $1 ${TRANSFERD_BENCH_ENV_A:-}"
echo "B: $2 ${TRANSFERD_BENCH_ENV_B:-}"
echo
echo "| run | side | connections | ok/s | p99 ms | CPU µs/ok all | transferd | broker | redis | postgres | serve peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
  for side in a b; do
    if [ "$side" = a ]; then settings="${TRANSFERD_BENCH_ENV_A:-}"; else settings="${TRANSFERD_BENCH_ENV_B:-}"; fi
    TRANSFERD_BIN="$work/transferd-$side" TRANSFERD_BENCH_POST_ONLY=1 TRANSFERD_BENCH_ENV="$settings" \
      cargo bench --quiet -p transferd-e2e --bench http >"$work/$side-$round.txt" 2>"$work/$side-$round.err" \
      || { log "run $round of side $side failed:"; cat "$work/$side-$round.err" >&2; exit 1; }
    # The POST rows: | POST /transfers | connections | ok/s | p50 | p99 | p99.9 | errors | all | transferd | broker | redis | postgres | serve RSS | worker RSS |
    awk -F' *\\| *' -v run="$round" -v side="${side^^}" \
      '$2 == "POST /transfers" && $5 ~ /^[0-9.]+$/ && NF > 12 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", run, side, $3, $4, $6, $9, $10, $11, $12, $13, $14 }' \
      "$work/$side-$round.txt" | tee -a "$work/rows"
  done
done

echo
echo "The work each transfer cost, counted (the same on a slow machine as on a fast one):"
echo
echo "| run | side | connections | PostgreSQL write transactions | WAL bytes | Redis calls by command | context switches: transferd | broker | redis | postgres |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
  for side in a b; do
    awk -F' *\\| *' -v run="$round" -v side="${side^^}" \
      '$2 == "POST /transfers" && NF <= 12 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", run, side, $3, $4, $5, $6, $7, $8, $9, $10 }' \
      "$work/$side-$round.txt"
  done
done

echo
echo "Medians by side and connections:"
echo
echo "| side | connections | ok/s | p99 ms | CPU µs/ok all | transferd | broker | redis | postgres |"
echo "|---|---|---|---|---|---|---|---|---|"
for side in A B; do
  for connections in $(awk -F' *\\| *' '{ print $4 }' "$work/rows" | sort -nu); do
    awk -F' *\\| *' -v side="$side" -v c="$connections" '$3 == side && $4 == c' "$work/rows" >"$work/selected"
    printf '| %s | %s |' "$side" "$connections"
    for column in 5 6 7 8 9 10 11; do
      printf ' %s |' "$(awk -F' *\\| *' -v k="$column" '{ print $k }' "$work/selected" | sort -n \
        | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
    done
    echo
  done
done
