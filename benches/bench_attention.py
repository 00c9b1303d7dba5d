"""Attention benchmark and CI gate: ours vs torch's CPU scaled_dot_product_attention, one run.

Targets from the attention issue: >= 1.0x torch without a mask, >= 1.7x with ``is_causal``
(ours skips the tiles above the diagonal; torch's CPU kernel gains little from causality).
The floors below sit well under the measured ratios (benches/results/attention.json) so that a
noisy, shared 2-core machine passes, yet losing the causal tile skipping (about 1.7x of our
causal time) or the vectorised softmax fails. Also gated: the O(L) memory of forward + backward
at L = 8192 (a fraction of one L x S score matrix).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bigmodel_native.benchmarks import attention
from bigmodel_native.benchmarks.attention import TORCH
from bigmodel_native.benchmarks.harness import OURS, CaseResult, format_table, time_case, write_json

#: case prefix -> floor on torch_time / our_time
FLOORS = {
    "a:": 0.6,
    "b:": 0.9,
    "c:": 0.7,
}
TARGETS = {"a:": 1.0, "b:": 1.7, "c:": 1.7}


@pytest.fixture(scope="module")
def memory() -> dict[str, float]:
    return attention.peak_memory()


@pytest.fixture(scope="module")
def memory_half() -> dict[str, float]:
    return attention.peak_memory(n=4096)


@pytest.fixture(scope="module")
def results(
    threads: int, results_dir: Path, memory: dict[str, float], memory_half: dict[str, float]
) -> dict[str, CaseResult]:
    out = {c.name: time_case(c) for c in attention.cases()}
    ratios: dict[str, object] = {f"{name} vs {TORCH}": round(r.ratio(TORCH), 3) for name, r in out.items()}
    ratios["targets (issue)"] = {f"{k} vs {TORCH}": v for k, v in TARGETS.items()}
    ratios["peak_memory_L8192"] = {k: round(v, 2) for k, v in memory.items()}
    ratios["peak_memory_L4096"] = {k: round(v, 2) for k, v in memory_half.items()}
    write_json(results_dir / "attention.json", "attention", threads, list(out.values()), ratios)
    print("\n" + format_table(list(out.values())))
    print(memory)
    return out


@pytest.mark.parametrize("prefix", list(FLOORS))
def test_attention_ratio_floors(results: dict[str, CaseResult], prefix: str) -> None:
    for name, r in results.items():
        if name.startswith(prefix):
            assert r.ratio(TORCH) >= FLOORS[prefix], f"{name}: {r.ratio(TORCH):.2f}x, floor {FLOORS[prefix]}"


def test_causal_skips_tiles(threads: int) -> None:
    # Ours causal and ours full on one shape, interleaved in one run (so load changes hit both):
    # half the score tiles are skipped, so causal must be clearly faster. The same code on both
    # sides, so each side's fastest fifth is compared: a median of a few rounds on this noisy
    # machine once put the ratio at 0.86 where it is about 0.6.
    case = attention.causal_skip_case()
    r = time_case(case, rounds=11)
    full, causal = r.results["full"].p20_s, r.results["causal"].p20_s
    print(f"\ncausal / full (ours, {case.name}): {causal / full:.2f}")
    assert causal < 0.8 * full, f"causal {causal * 1e3:.1f} ms vs full {full * 1e3:.1f} ms"


def test_memory_is_linear_in_length(results: dict[str, CaseResult], memory: dict[str, float]) -> None:
    # Everything beyond the four result tensors must be far below one L x S matrix per head.
    extra = memory["peak_extra_mib"] - memory["results_mib"]
    assert extra < 0.1 * memory["one_score_matrix_per_head_mib"], memory


def test_memory_grows_linearly(memory: dict[str, float], memory_half: dict[str, float]) -> None:
    # Doubling L doubles O(L) memory; an L x S buffer anywhere would quadruple it.
    assert memory["peak_extra_mib"] < 2.6 * memory_half["peak_extra_mib"], (memory, memory_half)


def test_attention_pytest_benchmark(benchmark, threads: int) -> None:
    """Our causal 8x8x512x64 forward under pytest-benchmark's own statistics."""
    (case,) = [c for c in attention.cases(quick=True) if c.name == "b: 8x8x512x64 causal fwd"]
    benchmark.pedantic(case.providers[OURS], rounds=5, warmup_rounds=1)
