#!/usr/bin/env bash
# The whole test suite on a fresh machine: install everything, then the Rust unit tests, the
# Python tests, and the benchmark gate (benches/ times torch and ours in one run and fails when a
# ratio falls under its floor).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo test --release --workspace --exclude bigmodel-py
.venv/bin/python -m pytest tests -q
.venv/bin/python -m pytest benches -q --benchmark-disable-gc --benchmark-columns=median,rounds
