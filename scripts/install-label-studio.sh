#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtual environment (it pins Django and
# friends, so it must not share the backend's venv).
#
#   scripts/install-label-studio.sh            # -> $LS_VENV, default <repo>/.ls-venv
#   LS_VENV=/opt/ls scripts/install-label-studio.sh
#
# Idempotent: does nothing when the venv already holds label-studio 1.23.2.
# Needs python3 (>= 3.10) with the venv module and access to PyPI (~40 s, ~1 GB).
set -euo pipefail

LS_VERSION="1.23.2"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LS_VENV="${LS_VENV:-$repo_root/.ls-venv}"
PYTHON="${PYTHON:-python3}"

installed_version() {
    "$LS_VENV/bin/python" -c \
        'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null || true
}

if [ -x "$LS_VENV/bin/label-studio" ] && [ "$(installed_version)" = "$LS_VERSION" ]; then
    echo "label-studio $LS_VERSION already installed in $LS_VENV"
    exit 0
fi

if [ ! -x "$LS_VENV/bin/python" ]; then
    echo "creating venv $LS_VENV"
    "$PYTHON" -m venv "$LS_VENV"
fi
"$LS_VENV/bin/python" -m pip install --quiet --upgrade pip
"$LS_VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"
echo "installed label-studio $(installed_version) in $LS_VENV"
