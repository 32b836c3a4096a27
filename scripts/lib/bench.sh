# Shared by scripts/bench.sh (sourced after env.sh, not run): the start every benchmark shares,
# each benchmark, the side-by-side comparison of two builds, and the report.
# shellcheck shell=bash

# The lines of docs/performance.md between which `./scripts/bench.sh all` writes its report.
REPORT_BEGIN='<!-- report:begin -->'
REPORT_END='<!-- report:end -->'

services_started=""
# The local services, wrk (the HTTP load generator) and the guest component; once per run.
start_services() {
  [ -n "$services_started" ] && return 0
  "$TRANSFERD_ROOT/scripts/services.sh"
  command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
  build_guest
  services_started=yes
}

host_started=""
# The shared start: start_services, then the release host, copied for the benchmarks to start
# serve from (TRANSFERD_BIN), since a build elsewhere must not replace the binary under a
# running benchmark. Copied beside it and renamed over it, because the last run's transferd may
# still be exiting from the old file (writing into a running executable fails with "Text file
# busy"). Once per run.
start() {
  start_services
  [ -n "$host_started" ] && return 0
  step "building the host (transferd, release)" cargo build --release --quiet -p transferd
  export TRANSFERD_BIN="$TRANSFERD_STATE_DIR/transferd-bench"
  cp "$CARGO_TARGET_DIR/release/transferd" "$TRANSFERD_BIN.$$"
  mv -f "$TRANSFERD_BIN.$$" "$TRANSFERD_BIN"
  host_started=yes
}

# The cost of one guest decision with in-memory imports: wasmtime with a fresh instance per
# call, wasmtime with a reused instance, and the same logic compiled natively. Prints median
# and p99 per call.
bench_guest() {
  start_services
  cargo bench --quiet --workspace --bench guest
}

# POST /transfers with wrk at 1, 16, 64 and 256 connections (authentication and idempotency
# keys on), POST → settled latency at half the 64-connection rate, and GET /transfers/{id};
# CPU time per accepted transfer over transferd, the broker, Redis and PostgreSQL, and the work
# each transfer causes. Prints markdown tables.
bench_http() {
  start
  log "benchmarking the HTTP API (runs of TRANSFERD_BENCH_SECONDS each)"
  cargo bench --quiet -p transferd-e2e --bench http
}

# POST /transfers/batch with batches of 1,000 (authentication and idempotency keys on, SQLite
# broker): accepted transfers/s, CPU µs per transfer per process, batch → settled p50/p99.
bench_batch() {
  start
  cargo bench --quiet -p transferd-e2e --bench batch
}

# Settlement throughput into PostgreSQL (fsync on) for batch sizes 1, 100 and 1000.
bench_settlement() {
  start_services
  cargo bench --quiet -p transferd --bench settlement
}

# History queries (lists, entries, balances at a moment) over a ledger of
# TRANSFERD_BENCH_HISTORY_TRANSFERS transfers (10,000,000), seeded once and kept for later runs.
bench_history() {
  start_services
  cargo bench --quiet -p transferd --bench history
}

# The broker's part: POST /transfers latency with the broker on memory vs SQLite storage
# (through an API-only transferd), then the broker's own ceiling: rdkafka alone with
# transferd's producer settings against each engine, with and without the trace header.
bench_broker() {
  start
  cargo bench --quiet -p transferd-e2e --bench broker
  echo
  cargo bench --quiet -p transferd-e2e --bench broker_ceiling
}

# Hot swaps: activation-to-new-version time on two replicas, and latency during swaps.
bench_swap() {
  start
  # Its own target directory: building it rebuilds the guest crate without its export, which
  # in the shared directory would overwrite transferd_guest.wasm.
  step "building the strict test guest" env --chdir="$TRANSFERD_ROOT/tests/guests/strict" \
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/strict-guest" \
    cargo build --release --target wasm32-wasip2 --quiet
  export TRANSFERD_TEST_STRICT_GUEST="$CARGO_TARGET_DIR/strict-guest/wasm32-wasip2/release/transferd_test_guest_strict.wasm"
  cargo bench --quiet -p transferd-e2e --bench swap
}

# Fails unless $1 holds each report marker once, as a line of its own, the beginning first.
check_markers() {
  local page=$1 begin end
  begin="$(grep -nxF -- "$REPORT_BEGIN" "$page" 2>/dev/null | cut -d: -f1 || true)"
  end="$(grep -nxF -- "$REPORT_END" "$page" 2>/dev/null | cut -d: -f1 || true)"
  if ! [[ "$begin" =~ ^[0-9]+$ && "$end" =~ ^[0-9]+$ ]] || [ "$begin" -ge "$end" ]; then
    log "$page must hold the lines $REPORT_BEGIN and $REPORT_END, once each and in that order: the report goes between them"
    return 1
  fi
}

# Replaces what lies between the report markers of the page $1 with the file $2; the rest of
# the page stays as it is.
write_report() {
  local page=$1 report=$2
  check_markers "$page"
  awk -v begin="$REPORT_BEGIN" -v end="$REPORT_END" -v report="$report" '
    $0 == end { inside = 0 }
    !inside { print }
    $0 == begin { while ((getline line < report) > 0) print line; inside = 1 }
  ' "$page" >"$page.new"
  mv "$page.new" "$page"
}

# The report, in markdown, from the benchmarks' outputs in the directory $1.
report() {
  local outputs=$1 cpu_model memory_gib
  cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  memory_gib="$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)"
  echo "Written by \`./scripts/bench.sh\` at commit $(git -C "$TRANSFERD_ROOT" rev-parse --short HEAD)"
  echo "on $(nproc) cores ($cpu_model), $memory_gib GiB, every service local. \`./scripts/bench.sh\` rewrites this section."
  echo
  echo "### Guest call (\`./scripts/bench.sh guest\`)"
  echo
  echo '```'
  cat "$outputs/guest.txt"
  echo '```'
  echo
  echo "### HTTP API (\`./scripts/bench.sh http\`, ${TRANSFERD_BENCH_SECONDS:-10} s per run)"
  echo
  cat "$outputs/http.txt"
  echo
  echo "### Settlement into PostgreSQL, fsync on (\`./scripts/bench.sh settlement\`)"
  echo
  echo '```'
  cat "$outputs/settlement.txt"
  echo '```'
  echo
  echo "### History queries (\`./scripts/bench.sh history\`)"
  echo
  cat "$outputs/history.txt"
  echo
  echo "### The durable broker's cost (\`./scripts/bench.sh broker\`)"
  echo
  echo '```'
  cat "$outputs/broker.txt"
  echo '```'
  echo
  echo "### Hot swap (\`./scripts/bench.sh swap\`)"
  echo
  echo '```'
  cat "$outputs/swap.txt"
  echo '```'
}

# Every benchmark in turn (never two at once: they would measure each other), then the report
# into the page TRANSFERD_BENCH_REPORT (docs/performance.md), printed too. The markers are
# checked first, so a page without them fails before the benchmarks run rather than after.
bench_all() {
  local page="${TRANSFERD_BENCH_REPORT:-$TRANSFERD_ROOT/docs/performance.md}" outputs name
  local written="$TRANSFERD_STATE_DIR/bench-report.md"
  check_markers "$page"
  outputs="$(mktemp -d)"
  # shellcheck disable=SC2064 # the directory is known now
  trap "rm -rf '$outputs'" EXIT
  for name in guest http settlement history broker swap; do
    log "running the $name benchmark"
    "bench_$name" >"$outputs/$name.txt"
  done
  report "$outputs" >"$written"
  write_report "$page" "$written"
  log "wrote the report into $page (and $written)"
  cat "$written"
}

# Puts the transferd of $1 (a binary, or a git revision to build in the scratch worktree $3)
# at $2.
binary_of() {
  local side=$1 out=$2 tree=$3
  if [ -f "$side" ]; then
    cp "$side" "$out"
    return
  fi
  git -C "$TRANSFERD_ROOT" worktree add --detach --quiet "$tree" "$side"
  step "building transferd at $side" env --chdir="$tree" cargo build --release --quiet -p transferd
  cp "$CARGO_TARGET_DIR/release/transferd" "$out"
  git -C "$TRANSFERD_ROOT" worktree remove --force "$tree"
}

# Runs the awk program $3 over each run's output in the directory $1, for $2 rounds, side A
# then side B, with `run` and `side` set.
each_run() {
  local work=$1 rounds=$2 program=$3 round side
  for round in $(seq 1 "$rounds"); do
    for side in a b; do
      awk -F' *\\| *' -v run="$round" -v side="${side^^}" "$program" "$work/$side-$round.txt"
    done
  done
}

# The median of the numbers on standard input, one a line.
median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Two builds of transferd side by side: POST /transfers runs of the HTTP benchmark, alternated
# A B A B … in one sitting, so that whatever else slows the machine down falls on both alike.
# Each side ($1, $2) is a git revision (built from a scratch worktree, sharing the build
# directory) or the path of a transferd binary. Prints each run's figures and each side's
# median.
bench_ab() {
  if [ $# -ne 2 ]; then
    log "usage: $0 ab <revision-or-binary-a> <revision-or-binary-b>"
    return 2
  fi
  start_services
  local rounds="${TRANSFERD_BENCH_ROUNDS:-3}" work round side settings connections column
  export TRANSFERD_BENCH_CONNECTIONS="${TRANSFERD_BENCH_CONNECTIONS:-64}"
  work="$(mktemp -d)"
  # shellcheck disable=SC2064 # the directory is known now
  trap "git -C '$TRANSFERD_ROOT' worktree remove --force '$work/tree' >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  binary_of "$1" "$work/transferd-a" "$work/tree"
  binary_of "$2" "$work/transferd-b" "$work/tree"
  # The benchmark itself, built once before the first run.
  cargo bench --quiet -p transferd-e2e --bench http --no-run

  for round in $(seq 1 "$rounds"); do
    for side in a b; do
      if [ "$side" = a ]; then settings="${TRANSFERD_BENCH_ENV_A:-}"; else settings="${TRANSFERD_BENCH_ENV_B:-}"; fi
      log "run $round of $rounds, side ${side^^}"
      TRANSFERD_BIN="$work/transferd-$side" TRANSFERD_BENCH_POST_ONLY=1 TRANSFERD_BENCH_ENV="$settings" \
        cargo bench --quiet -p transferd-e2e --bench http >"$work/$side-$round.txt" 2>"$work/$side-$round.err" \
        || { log "run $round of side $side failed:"; cat "$work/$side-$round.err" >&2; return 1; }
    done
  done

  echo "A: $1 ${TRANSFERD_BENCH_ENV_A:-}"
  echo "B: $2 ${TRANSFERD_BENCH_ENV_B:-}"
  echo
  echo "| run | side | connections | ok/s | p99 ms | CPU µs/ok all | transferd | broker | redis | postgres | serve peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  # The POST rows: | POST /transfers | connections | ok/s | p50 | p99 | p99.9 | errors | all | transferd | broker | redis | postgres | serve RSS | worker RSS |
  each_run "$work" "$rounds" \
    '$2 == "POST /transfers" && $5 ~ /^[0-9.]+$/ && NF > 12 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", run, side, $3, $4, $6, $9, $10, $11, $12, $13, $14 }' \
    | tee "$work/rows"

  echo
  echo "The work each transfer cost, counted (the same on a slow machine as on a fast one):"
  echo
  echo "| run | side | connections | PostgreSQL write transactions | WAL bytes | Redis calls by command | context switches: transferd | broker | redis | postgres |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  each_run "$work" "$rounds" \
    '$2 == "POST /transfers" && NF <= 12 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", run, side, $3, $4, $5, $6, $7, $8, $9, $10 }'

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
        printf ' %s |' "$(awk -F' *\\| *' -v k="$column" '{ print $k }' "$work/selected" | median)"
      done
      echo
    done
  done
}
