#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis (from PyPI) against a live transferd on the real
# services: its own database, Redis key prefix and topics, authenticated as a funded user who
# is also an admin. Bounded in time (TRANSFERD_API_FUZZ_SECONDS, 90) and in examples per
# operation (TRANSFERD_API_FUZZ_EXAMPLES, 100). Fails on any 5xx and on any answer that does not
# conform to /openapi.json; prints how many cases ran.
#
# Expects the services up and the guest built (scripts/test.sh does both); builds the host
# unless TRANSFERD_BIN names one.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"

seconds="${TRANSFERD_API_FUZZ_SECONDS:-90}"
examples="${TRANSFERD_API_FUZZ_EXAMPLES:-100}"
# Pinned: a new release may add checks, which should be a decision, not a surprise in CI.
schemathesis_version=4.32.5
venv="$TRANSFERD_TOOLS_DIR/schemathesis-$schemathesis_version"
if [ ! -x "$venv/bin/st" ]; then
  log "installing schemathesis $schemathesis_version from PyPI"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$schemathesis_version"
fi

if [ -z "${TRANSFERD_BIN:-}" ]; then
  cargo build --release --quiet -p transferd
  TRANSFERD_BIN="$CARGO_TARGET_DIR/release/transferd"
fi

# A run of its own: database, key prefix, topics and port.
run_id="apifuzz_$(date +%s)_$$"
database="transferd_$run_id"
createdb -h 127.0.0.1 -U postgres "$database"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base_url="http://127.0.0.1:$port"
work="$(mktemp -d)"
export TRANSFERD_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database"
export TRANSFERD_REDIS_PREFIX="$run_id:"
export TRANSFERD_TOPIC_PREFIX="$run_id."
export TRANSFERD_LISTEN="127.0.0.1:$port"
TRANSFERD_JWT_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export TRANSFERD_JWT_SECRET
unset TRANSFERD_AUTH TRANSFERD_ADMIN_TOKEN TRANSFERD_JWT_PUBLIC_KEY TRANSFERD_JWT_ISSUER TRANSFERD_JWT_AUDIENCE

server=""
cleanup() {
  if [ -n "$server" ]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$database" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$run_id:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$TRANSFERD_BIN" serve >"$work/transferd.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
  curl -fsS "$base_url/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/transferd.log" >&2; exit 1; }
  sleep 0.1
done

# User 1 holds the admin role too, so one token reaches every operation; users 1 and 2 have
# money, so some transfers go through.
token="$("$TRANSFERD_BIN" token --sub 1 --admin --ttl 1h)"
for user in 1 2; do
  curl -fsS "$base_url/admin/deposits" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' \
    -d "{\"user_id\": $user, \"currency\": \"USD\", \"amount\": \"1000000.00\"}" >/dev/null
done

log "schemathesis: at most $examples examples per operation, at most ${seconds}s"
# Every check but positive_data_acceptance: a valid request may still be refused
# (insufficient funds, someone else's account, an unknown guest version).
# From the run's own directory: schemathesis keeps a cache (.schemathesis/) where it runs.
status=0
(cd "$work" && "$venv/bin/st" run "$base_url/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "$examples" --max-time "$seconds" \
  --request-timeout 20 --workers 2 \
  --report ndjson --report-dir "$work/report" \
  --no-color >"$work/schemathesis.txt" 2>&1) || status=$?
cat "$work/schemathesis.txt"
# The case count, from the summary's "Test cases: N generated, …" line.
cases="$(grep -A1 '^Test cases:' "$work/schemathesis.txt" | grep -o '[0-9]* generated' || echo 'no count')"
log "schemathesis: $cases cases, exit status $status"
if [ "$status" -ne 0 ]; then
  log "transferd's log follows"
  tail -50 "$work/transferd.log" >&2
fi
exit "$status"
