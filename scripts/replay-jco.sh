#!/bin/sh
# Replays one recorded transfer under jco (Node.js) instead of wasmtime, so a decision can be
# explained outside transferd: `transferd replay --vector --guest-out` exports the decision as a
# conformance vector and the component of the version that made it, then the jco harness
# (tests/jco/run.mjs) runs that vector. Prints `identical` and exits 0 when jco makes exactly
# the recorded calls, message bytes included, and result; prints `different` and exits 1
# otherwise.
#
#   scripts/replay-jco.sh TRANSACTION_ID
#
# The database settings are transferd's (TRANSFERD_DATABASE_URL, …); TRANSFERD_BIN names the
# binary (default: transferd on PATH). tests/jco/install.sh installs jco.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 TRANSACTION_ID" >&2; exit 2; }
id="$1"
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${TRANSFERD_BIN:-transferd}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Log lines go to stdout: keep them out of the vector.
TRANSFERD_LOG=error "$bin" replay "$id" --vector --guest-out "$work/guest.wasm" >"$work/$id.json"
if TRANSFERD_GUEST="$work/guest.wasm" node "$root/tests/jco/run.mjs" --print "$work"; then
  echo identical
else
  echo different
  exit 1
fi
