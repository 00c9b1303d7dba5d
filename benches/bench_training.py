"""S3 training throughput gate: the seed CNN on bigmodel_native vs the same model and loop in plain torch.

Target once every kernel has landed: >= 2x plain torch. The floor here is loose (0.7x) and only
catches a gross regression of the model/loop on our optimizer; the measured ratio and which
building blocks were ours are recorded in benches/results/train.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bigmodel_native.benchmarks import training
from bigmodel_native.benchmarks.harness import OURS, CaseResult, format_table, time_case, write_json

FLOOR = 0.7


@pytest.fixture(scope="module")
def result(threads: int, results_dir: Path) -> CaseResult:
    (case,) = training.cases()
    r = time_case(case)
    per_call = training.images_per_call()
    ratios = {
        "S3 train images/s ours vs torch": round(r.ratio(training.TORCH), 3),
        "images_per_s": {k: round(per_call / v.median_s, 1) for k, v in r.results.items()},
        "implementations": training.implementations(),
    }
    write_json(results_dir / "train.json", "train", threads, [r], ratios)
    print("\n" + format_table([r]))
    print(ratios)
    return r


def test_s3_training_throughput_floor(result: CaseResult) -> None:
    ratio = result.ratio(training.TORCH)
    assert ratio >= FLOOR, f"S3 training: ours {ratio:.2f}x plain torch, floor {FLOOR}"


def test_s3_training_pytest_benchmark(benchmark, threads: int) -> None:
    """Ten of our S3 training steps under pytest-benchmark's own statistics."""
    call = training.providers()[OURS]
    call()
    benchmark.pedantic(call, rounds=3, warmup_rounds=1)
