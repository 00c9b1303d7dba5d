"""Adam step benchmark and CI gate: ours vs torch's for-loop, foreach and fused Adam, one run.

Floors sit well under the measured ratios (see benches/results/adam.json) so that a noisy
2-core machine passes, yet losing the parallel path (about 2x) or the fused single pass fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bigmodel_native.benchmarks import adam
from bigmodel_native.benchmarks.harness import OURS, CaseResult, format_table, time_case, write_json

#: case prefix -> (baseline, floor on baseline_time / our_time)
FLOORS = {
    # Measured 2.4-2.8x on the AVX-512 EPYC, once 1.98x on a noisy run; losing the parallel path
    # halves it, to about 1.3x.
    "a:": [("torch_forloop", 1.6), ("torch_fused", 0.6)],
    "b:": [("torch_forloop", 2.5), ("torch_fused", 0.8)],
    "c:": [("torch_forloop", 1.5), ("torch_fused", 0.6)],
}


@pytest.fixture(scope="module")
def results(threads: int, results_dir: Path) -> dict[str, CaseResult]:
    out = {c.name: time_case(c) for c in adam.cases()}
    ratios = {
        f"{name} vs {base}": round(r.ratio(base), 3)
        for name, r in out.items()
        for base in r.results
        if base != OURS
    }
    write_json(results_dir / "adam.json", "adam", threads, list(out.values()), ratios)
    print("\n" + format_table(list(out.values())))
    return out


@pytest.mark.parametrize("prefix", list(FLOORS))
def test_adam_ratio_floors(results: dict[str, CaseResult], prefix: str) -> None:
    (r,) = [v for k, v in results.items() if k.startswith(prefix)]
    for baseline, floor in FLOORS[prefix]:
        assert r.ratio(baseline) >= floor, f"{r.case}: {r.ratio(baseline):.2f}x vs {baseline}, floor {floor}"


def test_bf16_moves_fewer_bytes_than_fp32(results: dict[str, CaseResult]) -> None:
    (a,) = [v for k, v in results.items() if k.startswith("a:")]
    (c,) = [v for k, v in results.items() if k.startswith("c:")]
    # Same element count; bf16 moves half the bytes, so it must not be meaningfully slower. Recorded:
    # 0.75x the fp32 time on an AVX-512 Xeon, 1.0x on an AVX2 EPYC (no native bf16 conversion there,
    # so the fp32 step's bandwidth advantage is gone), with single runs up to 1.3x on a noisy 2-core
    # machine; hence the 50% margin. A scalar bf16 conversion path is 2-3x slower and still fails.
    assert c.results[OURS].median_s <= 1.5 * a.results[OURS].median_s


def test_adam_step_pytest_benchmark(benchmark, threads: int) -> None:
    """Our 16M-parameter step under pytest-benchmark's own statistics."""
    (case,) = [c for c in adam.cases(quick=True) if c.name.startswith("a:")]
    benchmark.pedantic(case.providers[OURS], rounds=10, warmup_rounds=2)
