#!/usr/bin/env bash
# The whole test suite. Called by `make test` (and so by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
