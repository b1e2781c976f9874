#!/usr/bin/env bash
# Install the headless browser used by the browser tests (tests/e2e, marker `browser`):
# Debian's chromium package, at /usr/bin/chromium. Python's `playwright` package
# (in requirements-dev.txt) drives it through `executable_path`; we never run
# `playwright install` (it downloads its own browser build, which is not reachable here).
#
# Idempotent: does nothing when /usr/bin/chromium already runs. Needs root (or sudo)
# and a Debian/Ubuntu apt source.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ] && "$CHROMIUM" --version >/dev/null 2>&1; then
    echo "chromium already installed: $("$CHROMIUM" --version)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
echo "installed: $("$CHROMIUM" --version)"
