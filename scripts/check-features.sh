#!/usr/bin/env bash
# Checks that the release binary and the tests build every shared dependency with the same
# features. Cargo unifies features per build: a dependency the tests' dev-dependencies turn
# one more feature on in is compiled twice, once for `cargo build -p transferd` and once for
# `cargo test --workspace`, and so is every crate above it (wasmtime among them). The host's
# Cargo.toml pins such features; this names any that drift apart again.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TRANSFERD_ROOT"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One line per package and feature set, "name version [features]" (a package built both as a
# normal dependency and for a build script or proc-macro can have two); workspace members'
# paths left out.
features() {
  cargo tree --quiet --prefix none --format '{p} [{f}]' "$@" \
    | sed -e 's/ (\*)$//' -e 's/ ([^)]*)//' | sort -u
}

features -p transferd -e normal,build >"$work/binary"
# The crash-points copy differs from the binary in the host crate itself, by design.
features -p transferd -e normal,build --features crash-points | grep -v '^transferd v' >"$work/crash-points"
features --workspace -e normal,build,dev >"$work/tests"

status=0
for build in binary crash-points; do
  # What this build compiles that the tests' build does not: the same package with other
  # features is compiled again, and so is everything above it.
  unshared="$(comm -23 "$work/$build" "$work/tests")"
  if [ -n "$unshared" ]; then
    log "the $build build compiles these with features the tests' build does not share:"
    echo "$unshared" >&2
    log "pin the tests' features for them in host/Cargo.toml (cargo tree --workspace -e features -i NAME tells who asks)"
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  log "the binary, its crash-points copy and the tests share every dependency's build"
fi
exit "$status"
