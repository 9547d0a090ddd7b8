#!/usr/bin/env bash
# Builds the operator console (console/dist, which `[console] assets` points at) and installs
# the end-to-end tests' driver (playwright-core, from console/package-lock.json). Never
# downloads a browser: tests/console.rs drives Debian's /usr/bin/chromium
# (scripts/install-deps.sh installs it).
#
#   scripts/console.sh          npm ci + npm run build in console/
set -euo pipefail

cd "$(dirname "$0")/../console"
command -v npm >/dev/null || { echo "console.sh: npm is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
npm ci --no-audit --no-fund --prefer-offline
npm run build
if [ ! -x /usr/bin/chromium ]; then
  echo "console.sh: note: /usr/bin/chromium is missing; tests/console.rs needs it (apt-get install chromium)" >&2
fi
echo "console built: $(pwd)/dist"
