#!/usr/bin/env bash
# Starts whatever of PostgreSQL (5432), Redis (6379) and the Kafka-protocol broker Tansu (9092)
# is not already listening on 127.0.0.1, installing what is missing, and creates the
# `transferd` database and the `transfer_topic` topic. Safe to run again.
#
# Tansu runs with memory storage: its log is gone when it stops. That suits tests and local
# runs; production uses Apache Kafka.
set -euo pipefail
source "$(dirname "$0")/env.sh"

KAFKA_PORT="${TRANSFERD_KAFKA_PORT:-9092}"
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"

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

ensure_tansu() {
  command -v tansu >/dev/null && return 0
  log "installing Tansu $TANSU_VERSION from crates.io (a cold build takes ~16 minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,postgres
}

start_tansu() {
  listening "$KAFKA_PORT" && return 0
  ensure_tansu
  log "starting Tansu on 127.0.0.1:$KAFKA_PORT (memory storage)"
  nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ \
    >"$TRANSFERD_STATE_DIR/tansu.log" 2>&1 &
  echo $! >"$TRANSFERD_STATE_DIR/tansu.pid"
  wait_for_port "$KAFKA_PORT" 60
}

create_database() {
  local name="${1:-transferd}"
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
    log "creating database $name"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$name\""
  fi
}

create_topic() {
  local topic="$1" partitions="${2:-6}"
  # An existing topic is fine: the broker answers "already exists" and nothing changes.
  tansu topic create "$topic" --partitions "$partitions" \
    --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 || true
}

ensure_toolchain
start_postgres
start_redis
start_tansu
create_database transferd
create_topic transfer_topic 6
log "PostgreSQL 5432, Redis 6379 and Tansu $KAFKA_PORT are up"
