#!/usr/bin/env bash
# Installs everything into ./.venv (idempotent: a second run reuses what is there) and builds the
# Rust extension in release mode into it. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.deps-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/requirements.txt -nt "$stamp" ]; then
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q -r scripts/requirements.txt
  touch "$stamp"
fi

# Real data for the training CLI when this is a Debian machine we may install on.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "note: could not install dataset-fashion-mnist; the CLI falls back to scikit-learn's digits"
fi

# Release build of the extension, installed into the venv (cargo reuses target/ between runs).
VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" .venv/bin/maturin develop --release -q
