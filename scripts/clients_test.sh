#!/usr/bin/env bash
# Type-check and test the TypeScript client (clients/typescript) when Node.js is present. Its
# tests run a real `control serve` from .venv (or CONTROL_BIN), so run `make install` first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [[ "${CONTROL_REQUIRE_NODE:-0}" == "1" ]]; then
    echo "clients-test: Node.js is required here (CONTROL_REQUIRE_NODE=1) but not installed" >&2
    exit 1
  fi
  echo "clients-test: SKIPPED: Node.js is not installed, so the TypeScript client was not type-checked or tested"
  exit 0
fi
cd clients/typescript
if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent typecheck
npm test --silent
