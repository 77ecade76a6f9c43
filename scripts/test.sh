#!/usr/bin/env bash
# The whole test suite. Called by `make test` (and so by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's Chromium (dashboard browser tests) and promtool, installed if missing.
bash scripts/ensure_test_tools.sh
exec .venv/bin/python -m pytest "$@"
