#!/bin/sh
# Installs the harness's pinned npm packages into tests/jco/node_modules (no global installs).
# Safe to run again: a second run finds everything up to date.
set -eu
cd "$(dirname "$0")"
if [ -f package-lock.json ]; then
  # The locked versions, without rewriting package-lock.json. Not `npm ci`: it refuses a lock
  # that lacks optional platform packages the registry in use cannot resolve (some of jco's
  # win32/darwin/musl binaries), which is the case on the build machine.
  npm install --no-save --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi
