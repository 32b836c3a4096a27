#!/usr/bin/env bash
# Installs what the browser tests need: Debian's chromium (when missing) and the pinned npm
# packages into tests/browser/node_modules (no global installs). Safe to run again.
set -euo pipefail
source "$(dirname "$0")/../../scripts/env.sh"
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null; then
  log "installing Debian's chromium for the browser tests (~1-2 min)"
  apt_install chromium
fi
npm install --no-save --no-audit --no-fund >/dev/null
