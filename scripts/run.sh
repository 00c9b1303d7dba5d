#!/usr/bin/env bash
# The main job on a fresh machine: install everything, then run the embedded default.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/bigmodel-native train
