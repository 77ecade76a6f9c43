#!/usr/bin/env bash
# The whole test suite. Called by `make test` (and so by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# The dashboard tests drive Debian's Chromium (installed here if missing).
bash scripts/ensure_chromium.sh
exec .venv/bin/python -m pytest "$@"
