"""Side-by-side timing of torch and bigmodel_native in one process.

Every case names several providers (ours and one or more torch baselines). Rounds interleave
the providers (ours, torch, ours, torch, ...) so that a noisy neighbour or a frequency change
hits all of them alike; the figure is the median over rounds. Both libraries are pinned to the
same thread count. Results go to a JSON file with the machine they were measured on.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import _native, set_num_threads

OURS = "bigmodel_native"


@dataclass
class Case:
    """One workload: a callable per provider, run interleaved."""

    suite: str
    name: str
    providers: dict[str, Callable[[], object]]
    #: Bytes one call moves (for GB/s), or None.
    bytes_moved: float | None = None
    #: Floating-point operations of one call (for GFLOP/s), or None.
    flops: float | None = None
    rounds: int = 15
    warmup: int = 3


@dataclass
class ProviderResult:
    provider: str
    median_s: float
    p20_s: float
    p80_s: float
    rounds: int
    gbps: float | None = None
    gflops: float | None = None


@dataclass
class CaseResult:
    suite: str
    case: str
    results: dict[str, ProviderResult] = field(default_factory=dict)

    def ratio(self, baseline: str, ours: str = OURS) -> float:
        """How many times faster ours is than ``baseline`` (baseline median / our median)."""
        return self.results[baseline].median_s / self.results[ours].median_s


def _quantile(sorted_xs: list[float], q: float) -> float:
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


def time_case(case: Case, rounds: int | None = None) -> CaseResult:
    """Runs every provider ``rounds`` times, interleaved, after ``warmup`` calls of each."""
    rounds = rounds or case.rounds
    for _ in range(case.warmup):
        for fn in case.providers.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in case.providers}
    for r in range(rounds):
        # Alternate the order each round so that no provider always runs right after another.
        order = list(case.providers.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = CaseResult(case.suite, case.name)
    for name, ts in times.items():
        ts.sort()
        med = statistics.median(ts)
        out.results[name] = ProviderResult(
            provider=name,
            median_s=med,
            p20_s=_quantile(ts, 0.2),
            p80_s=_quantile(ts, 0.8),
            rounds=len(ts),
            gbps=None if case.bytes_moved is None else case.bytes_moved / med / 1e9,
            gflops=None if case.flops is None else case.flops / med / 1e9,
        )
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pin_threads(threads: int | None) -> int:
    """Pins torch and our kernels to the same thread count (default: every core), and puts the
    allocator in its steady state (:func:`settle_allocator`): the set-up of every timing run."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    set_num_threads(n)
    settle_allocator()
    return n


def settle_allocator() -> None:
    """Frees one 16 MiB buffer, so that glibc serves smaller buffers from its heap.

    glibc maps every allocation above its dynamic threshold (128 KiB at start) afresh, and
    raises the threshold only when a *larger* mapped buffer is freed. Until then an op that
    allocates the same few-MiB output on every call pays page faults on every call: in a fresh
    process torch's 1->32 channel convolution of the S3 CNN took 4-5 ms instead of 0.4 ms. A
    training process reaches the raised threshold within its first steps; so does this one
    before anything is timed, whichever suite runs first (this favours torch, whose CPU
    allocator is plain malloc; ours reuses its own buffers).
    """
    # 16 MiB: under glibc's cap on the dynamic threshold (32 MiB, which a freed buffer must not
    # exceed to move it).
    buf = torch.empty(4 << 20, dtype=torch.float32)
    buf.fill_(0)
    del buf


def machine_info(threads: int) -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "isa": _native.active_isa(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: Path, suite: str, threads: int, results: list[CaseResult], ratios: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "suite": suite,
        "machine": machine_info(threads),
        "cases": [
            {"case": r.case, "providers": {k: asdict(v) for k, v in r.results.items()}} for r in results
        ],
        "ratios": ratios,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def format_table(results: list[CaseResult], ours: str = OURS) -> str:
    """A plain-text table: each provider's median, its ratio to ours, and throughput."""
    lines = [f"{'case':34s} {'provider':22s} {'median':>10s} {'ours is':>9s} {'GB/s':>7s} {'GFLOP/s':>8s}"]
    for r in results:
        mine = r.results[ours].median_s
        for name, p in r.results.items():
            ratio = "" if name == ours else f"{p.median_s / mine:8.2f}x"
            gb = "" if p.gbps is None else f"{p.gbps:7.1f}"
            gf = "" if p.gflops is None else f"{p.gflops:8.1f}"
            lines.append(f"{r.case:34s} {name:22s} {p.median_s * 1e3:8.2f}ms {ratio:>9s} {gb:>7s} {gf:>8s}")
    return "\n".join(lines)
