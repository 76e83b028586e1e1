#!/usr/bin/env bash
# Type-check and test the SpacetimeDB module when it and Node.js are present.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f module/package.json ]]; then
  echo "module-test: no module/ yet; nothing to check"
  exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [[ "${CONTROL_REQUIRE_NODE:-0}" == "1" ]]; then
    echo "module-test: Node.js is required here (CONTROL_REQUIRE_NODE=1) but not installed" >&2
    exit 1
  fi
  echo "module-test: SKIPPED: Node.js is not installed, so the SpacetimeDB module was not type-checked or tested"
  exit 0
fi
cd module
if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent typecheck
npm test --silent
