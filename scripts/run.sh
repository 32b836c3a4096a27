#!/usr/bin/env bash
# Runs transferd: starts the missing local services, builds the guest and the host, migrates
# and serves on ${TRANSFERD_LISTEN:-127.0.0.1:8080}. Extra arguments go to `transferd serve`.
#
# Without configured authentication it uses a development HS256 secret kept in the state
# directory (the same on every run), funds two demo users (1 and 2, USD) once, and prints a
# token for user 1 and an admin token, so the README's curl examples work as pasted.
set -euo pipefail
source "$(dirname "$0")/env.sh"

"$TRANSFERD_ROOT/scripts/services.sh"
build_guest
step "building the host (transferd, release)" \
  cargo build --release --quiet -p transferd --manifest-path "$TRANSFERD_ROOT/Cargo.toml"
transferd="$CARGO_TARGET_DIR/release/transferd"

# $1 random bytes as hex.
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

if [ -z "${TRANSFERD_ADMIN_TOKEN:-}" ]; then
  TRANSFERD_ADMIN_TOKEN="$(random_hex 24)"
  log "no TRANSFERD_ADMIN_TOKEN set; this run's static admin token is: $TRANSFERD_ADMIN_TOKEN"
fi
export TRANSFERD_ADMIN_TOKEN
export TRANSFERD_LISTEN="${TRANSFERD_LISTEN:-127.0.0.1:8080}"

if [ "${TRANSFERD_AUTH:-jwt}" != none ] && [ -z "${TRANSFERD_JWT_SECRET:-}" ] \
  && [ -z "${TRANSFERD_JWT_PUBLIC_KEY:-}" ]; then
  secret_file="$TRANSFERD_STATE_DIR/dev-jwt-secret"
  if [ ! -s "$secret_file" ]; then
    (umask 077 && random_hex 32 >"$secret_file")
    log "made a development JWT secret in $secret_file (delete it to make a new one)"
  fi
  TRANSFERD_JWT_SECRET="$(cat "$secret_file")"
  export TRANSFERD_JWT_SECRET
fi

"$transferd" serve "$@" &
server=$!
# Signals for the script go to the server, which drains and exits; the script then exits too.
trap 'kill -TERM "$server" 2>/dev/null || true' INT TERM HUP
base_url="http://$TRANSFERD_LISTEN"
for _ in $(seq 1 600); do
  curl -fsS "$base_url/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done

if curl -fsS "$base_url/healthz" >/dev/null 2>&1; then
  # Fixed deposit ids: a second run replays these deposits instead of adding money again.
  for funding in "1 100.00 0b5c6f2e-1d1a-4c1e-9a51-000000000001" "2 10.00 0b5c6f2e-1d1a-4c1e-9a51-000000000002"; do
    read -r user amount deposit_id <<<"$funding"
    curl -fsS "$base_url/admin/deposits" -H "authorization: Bearer $TRANSFERD_ADMIN_TOKEN" \
      -H 'content-type: application/json' \
      -d "{\"user_id\": $user, \"currency\": \"USD\", \"amount\": \"$amount\", \"deposit_id\": \"$deposit_id\"}" \
      >/dev/null || log "could not fund demo user $user"
  done
  if [ "${TRANSFERD_AUTH:-jwt}" = none ]; then
    log "authentication is off (TRANSFERD_AUTH=none): requests need no token"
  elif token="$("$transferd" token --sub 1 --ttl 24h)" && admin="$("$transferd" token --sub 1000 --admin --ttl 24h)"; then
    log "demo users 1 (100.00 USD) and 2 (10.00 USD) are funded. Tokens, valid 24 h:"
    printf 'export TOKEN=%s\nexport ADMIN_TOKEN=%s\n' "$token" "$admin"
  else
    log "no tokens printed: transferd token needs TRANSFERD_JWT_PRIVATE_KEY for a public-key setup"
  fi
fi
# A trapped signal interrupts `wait`; keep waiting until the server has drained and exited.
status=0
while kill -0 "$server" 2>/dev/null; do
  if wait "$server"; then status=0; else status=$?; fi
done
exit "$status"
