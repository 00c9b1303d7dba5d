"""Benchmark suites behind ``bigmodel-native bench`` and benches/ (torch and ours in one run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import adam, attention, conv2d, cross_entropy, distributed, pooling, training
from .harness import Case, CaseResult, format_table, pin_threads, time_case, write_json

#: suite name -> function returning its cases (``quick`` for fewer rounds).
SUITES: dict[str, Callable[[bool], list[Case]]] = {
    "adam": adam.cases,
    "ce": cross_entropy.cases,
    "conv": conv2d.cases,
    "pool": pooling.cases,
    "attention": attention.cases,
    "train": training.cases,
    "ddp": distributed.cases,
}


def run_suite(
    name: str, threads: int | None = None, out_dir: str | Path | None = None, quick: bool = False
) -> list[CaseResult]:
    """Times every case of a suite, prints the table and (with ``out_dir``) writes the JSON."""
    n = pin_threads(threads)
    results = [time_case(c) for c in SUITES[name](quick)]
    print(f"\n== {name} ({n} threads) ==")
    print(format_table(results))
    if out_dir is not None:
        write_json(Path(out_dir) / f"{name}.json", name, n, results, ratios={})
    return results
