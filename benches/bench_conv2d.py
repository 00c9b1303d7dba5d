"""conv2d benchmark and CI gate: ours vs torch's oneDNN conv2d at the seed CNNs' shapes, batch 64.

The issue's targets are forward+backward >= 1.5x torch on the two first layers (few input channels,
where torch's backward is slow), >= 1.0x on the other layers, and forward >= 0.9x everywhere.
On the quiet 2-core AMD EPYC (AVX2) machine (benches/results/conv.json) forward+backward runs at
3.0x and 1.5x torch on the two first layers and 0.95-0.98x on the others; forward at 0.94-1.24x,
0.82x on 3->32 (its K = 27 GEMM is memory-bound, where oneDNN's direct convolution wins).
Parking torch's OpenMP team during our calls (crates/bigmodel-kernels/src/openmp.rs) lifted every
ratio by a third: before it, torch's spinning workers took a core from us after each torch call.
The fused conv + ReLU + 2x2 max-pool cases (what the seed CNNs run) measure ours against torch's
``max_pool2d(relu(conv2d))``: 3.9-4.9x on the first layers and 1.6-1.7x on the second ones, whose
backward walks only the window maxima. The floors below are gates against regressions, not the
targets: they sit well under the
measured ratios so that noise passes, yet losing the batch-parallel plan (about 2x) or the blocked
im2col of small images fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bigmodel_native.benchmarks import conv2d
from bigmodel_native.benchmarks.harness import OURS, CaseResult, format_table, time_case, write_json

TORCH = conv2d.TORCH
#: case name -> floor on torch_time / our_time
FLOORS = {
    "fwd 1->32 28x28": 0.3,
    "fwd 32->64 13x13": 0.3,
    "fwd 64->64 5x5": 0.3,
    "fwd 3->32 32x32": 0.3,
    "fwd 32->64 15x15": 0.3,
    "fwd+bwd 1->32 28x28": 0.7,
    "fwd+bwd 32->64 13x13": 0.35,
    "fwd+bwd 64->64 5x5": 0.35,
    "fwd+bwd 3->32 32x32": 0.55,
    "fwd+bwd 32->64 15x15": 0.35,
    "fwd+bwd conv+ReLU 1->32 28x28": 0.7,
    "fwd+bwd conv+ReLU 32->64 13x13": 0.35,
    "fwd+bwd conv+ReLU+pool 1->32 28x28": 0.8,
    "fwd+bwd conv+ReLU+pool 32->64 13x13": 0.8,
    "fwd+bwd conv+ReLU+pool 3->32 32x32": 0.8,
    "fwd+bwd conv+ReLU+pool 32->64 15x15": 0.8,
}


@pytest.fixture(scope="module")
def results(threads: int, results_dir: Path) -> dict[str, CaseResult]:
    out = {c.name: time_case(c) for c in conv2d.cases()}
    ratios = {f"{name} vs {TORCH}": round(r.ratio(TORCH), 3) for name, r in out.items()}
    write_json(results_dir / "conv.json", "conv", threads, list(out.values()), ratios)
    print("\n" + format_table(list(out.values())))
    return out


def test_every_case_has_a_floor(results: dict[str, CaseResult]) -> None:
    assert set(results) == set(FLOORS)


@pytest.mark.parametrize("case", list(FLOORS))
def test_conv_ratio_floors(results: dict[str, CaseResult], case: str) -> None:
    r = results[case]
    assert r.ratio(TORCH) >= FLOORS[case], f"{case}: {r.ratio(TORCH):.2f}x vs torch, floor {FLOORS[case]}"


def test_conv_pytest_benchmark(benchmark, threads: int) -> None:
    """Our fwd+bwd of the first MNIST layer under pytest-benchmark's own statistics."""
    (case,) = [c for c in conv2d.cases(quick=True) if c.name == "fwd+bwd 1->32 28x28"]
    benchmark.pedantic(case.providers[OURS], rounds=10, warmup_rounds=2)
