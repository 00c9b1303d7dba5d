"""Cross-entropy benchmark and CI gate: ours vs F.cross_entropy, one run, plus peak memory.

Floors sit well under the measured ratios (see benches/results/ce.json) so that a noisy 2-core
machine passes, yet losing the fused single pass, the parallel path or the lean small-call path
fails. With logits that need a gradient our forward writes it while each run of rows is in cache
(the logits are read once), so forward+backward is one read of the logits, one write of the
gradient and the kernel's zeroing of that fresh buffer's pages (transparent huge pages make that
one pass instead of 128,000 faults, bigmodel_kernels::memory). torch reads the logits three times
and writes two logits-sized buffers in 4 KiB pages; its time swings by 1.5x between runs here.
The peak-memory test holds the issue's budget: at most one logits-sized buffer beyond the logits
(none in the in-place mode), against torch's two (its saved log-softmax and the gradient).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bigmodel_native.benchmarks import cross_entropy as ce
from bigmodel_native.benchmarks.harness import OURS, CaseResult, format_table, time_case, write_json

#: case name -> [(baseline, floor on baseline_time / our_time)]
FLOORS = {
    "a: (4096, 32000) fp32 fwd": [("torch", 1.8)],
    "a: (4096, 32000) fp32 fwd+bwd": [("torch", 3.0)],
    "b: (4096, 32000) bf16 fwd": [("torch", 1.3)],
    "b: (4096, 32000) bf16 fwd+bwd": [("torch", 1.5)],
    "c: (64, 10) fp32 fwd": [("torch", 0.5)],
    "c: (64, 10) fp32 fwd+bwd": [("torch", 0.5)],
}
SHAPE = (4096, 32000)


@pytest.fixture(scope="module")
def memory(threads: int) -> dict[str, int]:
    n, c = SHAPE
    return {p: ce.peak_extra_bytes(p, n, c, torch.float32, threads) for p in (OURS, ce.TORCH, ce.INPLACE)}


@pytest.fixture(scope="module")
def results(threads: int, results_dir: Path, memory: dict[str, int]) -> dict[str, CaseResult]:
    out = {c.name: time_case(c) for c in ce.cases(large=False)}  # (8192, 128256): CLI only
    ratios: dict[str, object] = {
        f"{name} vs {base}": round(r.ratio(base), 3)
        for name, r in out.items()
        for base in r.results
        if base != OURS
    }
    for name, r in out.items():
        if ce.INPLACE in r.results:
            base = r.results[ce.TORCH].median_s
            ratios[f"{name}: {ce.INPLACE} vs torch"] = round(base / r.results[ce.INPLACE].median_s, 3)
    logits = SHAPE[0] * SHAPE[1] * 4
    ratios["peak extra memory, fp32 (4096, 32000) fwd+bwd, in logits-sized buffers"] = {
        p: round(b / logits, 3) for p, b in memory.items()
    }
    write_json(results_dir / "ce.json", "ce", threads, list(out.values()), ratios)
    print("\n" + format_table(list(out.values())))
    print({p: f"{b / 2**20:.0f} MiB" for p, b in memory.items()})
    return out


@pytest.mark.parametrize("name", list(FLOORS))
def test_ce_ratio_floors(results: dict[str, CaseResult], name: str) -> None:
    r = results[name]
    for baseline, floor in FLOORS[name]:
        assert r.ratio(baseline) >= floor, f"{r.case}: {r.ratio(baseline):.2f}x vs {baseline}, floor {floor}"


@pytest.mark.parametrize("name", ["a: (4096, 32000) fp32 fwd+bwd", "b: (4096, 32000) bf16 fwd+bwd"])
def test_inplace_mode(results: dict[str, CaseResult], name: str) -> None:
    r = results[name]
    mine = r.results[ce.INPLACE].median_s
    # Its gain is memory. Speed: it skips the fresh gradient buffer's page faults but reads the
    # logits twice (the out-of-place mode writes the gradient in the forward, reading them once),
    # so the two run within noise of each other (2x margin for this noisy machine).
    assert mine <= 2.0 * r.results[OURS].median_s
    # Measured 3-4.5x torch on the loaded shared 2-core machine (benches/results/ce.json).
    assert r.results[ce.TORCH].median_s / mine >= 1.5


def test_peak_memory(memory: dict[str, int]) -> None:
    logits = SHAPE[0] * SHAPE[1] * 4
    assert memory[OURS] <= 1.1 * logits, memory
    assert memory[ce.INPLACE] <= 0.1 * logits, memory
    assert memory[ce.TORCH] >= 1.5 * logits, memory  # the baseline really keeps two buffers


def test_ce_pytest_benchmark(benchmark, threads: int) -> None:
    """Our (4096, 32000) fp32 forward+backward under pytest-benchmark's own statistics."""
    (case,) = [c for c in ce.cases(quick=True) if c.name == "a: (4096, 32000) fp32 fwd+bwd"]
    benchmark.pedantic(case.providers[OURS], rounds=5, warmup_rounds=1)
