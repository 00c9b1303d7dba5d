"""max_pool2d benchmark and CI gate: ours vs torch's CPU max_pool2d at the seed CNNs' pooling shapes.

torch's NCHW max pooling walks each window with scalar code; ours is one pass per plane with
the 2x2 / stride 2 case unrolled. Measured 2.8-6.2x torch forward and 1.8-3.1x forward+backward
on the 2-core AMD EPYC (AVX2) machine (benches/results/pool.json). The floors sit far under those
ratios so that a noisy machine passes, yet a kernel that fell back to a slow generic loop fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bigmodel_native.benchmarks import pooling
from bigmodel_native.benchmarks.harness import OURS, CaseResult, format_table, time_case, write_json

TORCH = pooling.TORCH
#: case name -> floor on torch_time / our_time
FLOORS = {
    "fwd 32x26x26": 1.5,
    "fwd+bwd 32x26x26": 0.8,
    "fwd 64x11x11": 1.2,
    "fwd+bwd 64x11x11": 0.7,
    "fwd 32x30x30": 1.5,
    "fwd+bwd 32x30x30": 0.8,
    "fwd 64x13x13": 1.2,
    "fwd+bwd 64x13x13": 0.7,
}


@pytest.fixture(scope="module")
def results(threads: int, results_dir: Path) -> dict[str, CaseResult]:
    out = {c.name: time_case(c) for c in pooling.cases()}
    ratios = {f"{name} vs {TORCH}": round(r.ratio(TORCH), 3) for name, r in out.items()}
    write_json(results_dir / "pool.json", "pool", threads, list(out.values()), ratios)
    print("\n" + format_table(list(out.values())))
    return out


def test_every_case_has_a_floor(results: dict[str, CaseResult]) -> None:
    assert set(results) == set(FLOORS)


@pytest.mark.parametrize("case", list(FLOORS))
def test_pool_ratio_floors(results: dict[str, CaseResult], case: str) -> None:
    r = results[case]
    assert r.ratio(TORCH) >= FLOORS[case], f"{case}: {r.ratio(TORCH):.2f}x vs torch, floor {FLOORS[case]}"


def test_pool_pytest_benchmark(benchmark) -> None:
    """Our fwd+bwd of the first MNIST pooling under pytest-benchmark's own statistics."""
    (case,) = [c for c in pooling.cases(quick=True) if c.name == "fwd+bwd 32x26x26"]
    benchmark.pedantic(case.providers[OURS], rounds=10, warmup_rounds=2)
