#!/usr/bin/env bash
# Starts whatever of PostgreSQL (5432), Redis (6379) and the Kafka-protocol broker Tansu (9092)
# is not already listening on 127.0.0.1, installing what is missing, and creates the
# `transferd` database and the `transfer_topic` topic. Safe to run again.
#
#   scripts/services.sh                  start what is missing
#   scripts/services.sh restart-broker   stop the broker this script started (SIGTERM, then
#                                        SIGKILL after 10 s) and start it again
#   scripts/services.sh kill-broker      SIGKILL the broker this script started (a crash)
#   scripts/services.sh stop-broker      stop it (SIGTERM) and leave it stopped
#
# Tansu keeps its log, topics and consumer-group offsets in SQLite
# ($TRANSFERD_STATE_DIR/tansu/tansu.db), so what it acknowledged survives a restart or a crash
# of the broker. TRANSFERD_BROKER_STORAGE=memory runs it with memory storage instead: faster to
# start, and everything is gone when it stops (a fast mode for throwaway runs). Production uses
# Apache Kafka.
set -euo pipefail
source "$(dirname "$0")/env.sh"

KAFKA_PORT="${TRANSFERD_KAFKA_PORT:-9092}"
BROKER_STORAGE="${TRANSFERD_BROKER_STORAGE:-sqlite}"
TANSU_PID_FILE="$TRANSFERD_STATE_DIR/tansu.pid"

start_postgres() {
  listening 5432 && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql
  fi
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for_port 5432 30
}

start_redis() {
  listening 6379 && return 0
  command -v redis-server >/dev/null || { log "installing Redis"; apt_install redis-server; }
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile "$TRANSFERD_STATE_DIR/redis.log"
  wait_for_port 6379 30
}

# Tansu with the SQLite engine (cargo feature libsql), in its own versioned root so that an
# older `tansu` elsewhere on PATH (one built without SQLite) is never taken for it.
ensure_tansu() {
  [ -x "$TANSU_BIN" ] && return 0
  # Not --quiet: cargo's progress shows while it builds.
  # Once per machine (cargo install --features dynostore,libsql,postgres): a long build.
  step "installing Tansu $TANSU_VERSION with SQLite storage from crates.io into $TANSU_ROOT" \
    cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore,libsql,postgres --root "$TANSU_ROOT"
  test -x "$TANSU_BIN"
}

# The storage engine URL for $BROKER_STORAGE. Tansu resolves `sqlite://NAME` as NAME in its
# working directory (it even reads an absolute path as relative to it), so the broker runs in
# the directory that holds the database; it creates the schema on first start.
storage_engine() {
  case "$BROKER_STORAGE" in
    sqlite) echo "sqlite://tansu.db" ;;
    memory) echo "memory://tansu/" ;;
    *) log "TRANSFERD_BROKER_STORAGE must be sqlite or memory, not '$BROKER_STORAGE'"; return 1 ;;
  esac
}

start_tansu() {
  listening "$KAFKA_PORT" && return 0
  ensure_tansu
  local engine directory="$TRANSFERD_STATE_DIR/tansu"
  engine="$(storage_engine)"
  mkdir -p "$directory"
  if [ "$BROKER_STORAGE" = sqlite ]; then
    # Before the broker opens it: the index Tansu 0.6 lacks (see the script).
    python3 "$TRANSFERD_ROOT/scripts/tansu-sqlite-index.py" "$directory/tansu.db"
  fi
  log "starting Tansu on 127.0.0.1:$KAFKA_PORT ($BROKER_STORAGE storage, $directory)"
  # Its own session (setsid): started from run.sh it would otherwise share transferd's
  # process group, and a signal aimed at the broker's group (a fault script, a supervisor)
  # would end transferd too, without a word.
  (
    cd "$directory"
    TOKIO_WORKER_THREADS="$TANSU_WORKER_THREADS" exec setsid "$TANSU_BIN" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "$engine" \
      </dev/null >>"$TRANSFERD_STATE_DIR/tansu.log" 2>&1
  ) &
  echo $! >"$TANSU_PID_FILE"
  wait_for_port "$KAFKA_PORT" 60
}

# The pid of the broker this script started, if it still runs.
tansu_pid() {
  local pid
  pid="$(cat "$TANSU_PID_FILE" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "tansu" ] && echo "$pid"
}

# Stops the broker with signal $1 (TERM or KILL); after TERM, waits up to 10 s, then kills.
stop_tansu() {
  local signal=$1 pid
  if ! pid="$(tansu_pid)"; then
    listening "$KAFKA_PORT" && { log "port $KAFKA_PORT is served by a broker this script did not start; not touching it"; return 1; }
    return 0
  fi
  log "stopping Tansu (pid $pid, SIG$signal)"
  kill "-$signal" "$pid"
  for _ in $(seq 1 100); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  if [ -d "/proc/$pid" ]; then
    log "Tansu did not stop within 10 s; SIGKILL"
    kill -KILL "$pid"
    sleep 0.2
  fi
  rm -f "$TANSU_PID_FILE"
}

create_database() {
  local name="${1:-transferd}"
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
    log "creating database $name"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$name\""
  fi
}

create_topic() {
  local topic="$1" partitions="${2:-1}"
  # An existing topic is fine: the broker answers "already exists" and nothing changes.
  "$TANSU_BIN" topic create "$topic" --partitions "$partitions" \
    --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 || true
}

case "${1:-start}" in
  start) ;;
  restart-broker) stop_tansu TERM; start_tansu; create_topic transfer_topic; exit 0 ;;
  kill-broker) stop_tansu KILL; exit 0 ;;
  stop-broker) stop_tansu TERM; exit 0 ;;
  *) log "usage: $0 [start|restart-broker|kill-broker|stop-broker]"; exit 2 ;;
esac

ensure_toolchain
start_postgres
start_redis
start_tansu
create_database transferd
create_topic transfer_topic
log "PostgreSQL 5432, Redis 6379 and Tansu $KAFKA_PORT are up"
