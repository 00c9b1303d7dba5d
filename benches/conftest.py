"""Shared set-up of the benchmark gate: thread pinning and the results folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bigmodel_native.benchmarks.harness import pin_threads

RESULTS = Path(__file__).parent / "results"


@pytest.fixture(scope="session")
def threads() -> int:
    """Both libraries pinned to the same count: BENCH_THREADS, else every core."""
    return pin_threads(int(os.environ.get("BENCH_THREADS", "0")) or None)


@pytest.fixture(scope="session")
def results_dir() -> Path:
    return RESULTS
