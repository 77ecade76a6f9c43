#!/usr/bin/env bash
# Debian packages the test suite drives for real, installed when missing:
#   chromium   - the dashboard's browser tests (Playwright uses it through
#                executable_path; `playwright install` is never used: it
#                downloads a browser build, which these machines cannot fetch);
#   prometheus - only for its `promtool check metrics` (no server is started).
# A no-op when both are already there.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure_test_tools: missing ${missing[*]}; install with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "ensure_test_tools: installing Debian's ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
test -x /usr/bin/chromium
command -v promtool >/dev/null
