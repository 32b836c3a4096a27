# Shared by the scripts (sourced, not run): toolchain, build directory, ports.
# shellcheck shell=bash

export PATH="$HOME/.cargo/bin:$PATH"
# Build outside the checkout so a fresh clone (CI) reuses what an earlier build compiled.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/transferd-target}"
# Where the scripts keep logs and pid files of the services they start.
export TRANSFERD_STATE_DIR="${TRANSFERD_STATE_DIR:-$HOME/.cache/transferd-state}"
mkdir -p "$TRANSFERD_STATE_DIR"

# Tools the scripts install for the project, one versioned directory each.
export TRANSFERD_TOOLS_DIR="${TRANSFERD_TOOLS_DIR:-$HOME/.cache/transferd-tools}"
# Tansu built with SQLite storage; the tests start private brokers with the same binary.
export TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
export TANSU_ROOT="$TRANSFERD_TOOLS_DIR/tansu-$TANSU_VERSION-libsql"
export TANSU_BIN="$TANSU_ROOT/bin/tansu"
export TRANSFERD_TANSU="${TRANSFERD_TANSU:-$TANSU_BIN}"
# Tokio worker threads for every Tansu the scripts and tests start. SQLite writes one
# transaction at a time anyway, and on a small machine a second worker only adds wake-ups,
# which cost the broker CPU for every transfer.
export TANSU_WORKER_THREADS="${TANSU_WORKER_THREADS:-1}"
# The development broker cannot take an idempotent producer: Tansu 0.6's SQLite engine panics
# in its idempotent-producer check after a timed-out request, and the whole broker goes down.
# transferd's default is on, for a real Kafka cluster (docs/operations.md).
export TRANSFERD_KAFKA_IDEMPOTENCE="${TRANSFERD_KAFKA_IDEMPOTENCE:-false}"
# Nor a replication factor of -1 (the broker's default): Tansu 0.6 stores it as given and
# describes such a topic with no replicas.
export TRANSFERD_TOPIC_REPLICATION_FACTOR="${TRANSFERD_TOPIC_REPLICATION_FACTOR:-1}"

TRANSFERD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TRANSFERD_ROOT
export TRANSFERD_GUEST="${TRANSFERD_GUEST:-$CARGO_TARGET_DIR/wasm32-wasip2/release/transferd_guest.wasm}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

# $1 seconds as "42 s" or "12 min 5 s".
duration() {
  if [ "$1" -ge 60 ]; then printf '%d min %d s' $(($1 / 60)) $(($1 % 60)); else printf '%d s' "$1"; fi
}

# Runs a long step: a line before it saying what it is, a line every minute while it runs (a
# cold build under `cargo --quiet` is otherwise silent for many minutes), and a line after it
# with how long it took. Returns the command's status.
#   step "building the host" cargo build ...
# The command should be a program, not a shell function: `set -e` does not reach inside a
# function run as the left side of `||`.
step() {
  local what=$1 started=$SECONDS status=0 heartbeat
  shift
  log "$what"
  # The heartbeat ends when killed below, or by itself within a minute once this script has
  # gone (an interrupt). Its sleep holds no output open, so a pipe reading the script's output
  # is not kept waiting for it.
  (
    while sleep 60 >/dev/null 2>&1 && kill -0 "$$" 2>/dev/null; do
      log "... still $what ($(duration $((SECONDS - started))) so far)"
    done
  ) &
  heartbeat=$!
  "$@" || status=$?
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then
    log "$what: done in $(duration $((SECONDS - started)))"
  else
    log "$what: failed after $(duration $((SECONDS - started))) (exit status $status)"
  fi
  return "$status"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to $2 seconds for port $1.
wait_for_port() {
  local port=$1 seconds=$2
  for _ in $(seq 1 $((seconds * 10))); do
    listening "$port" && return 0
    sleep 0.1
  done
  log "nothing is listening on 127.0.0.1:$port after ${seconds}s"
  return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >/dev/null
    apt_updated=yes
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The Rust toolchain pieces the build needs: the wasm target and a C toolchain for the bundled librdkafka.
ensure_toolchain() {
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    log "adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
  fi
  local missing=()
  command -v cc >/dev/null || missing+=(build-essential)
  command -v make >/dev/null || missing+=(make)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v node >/dev/null || missing+=(nodejs npm)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

# Builds the guest component: plain cargo, target wasm32-wasip2, from the guest's folder.
build_guest() {
  step "building the guest component (wasm32-wasip2)" \
    env --chdir="$TRANSFERD_ROOT/guest" cargo build --release --target wasm32-wasip2 --quiet
  test -f "$TRANSFERD_GUEST"
}
