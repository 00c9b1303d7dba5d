"""Cross-entropy: ours against ``torch.nn.functional.cross_entropy``, forward and forward+backward.

Cases (from the cross-entropy issue): (N, C) = (4096, 32000) in fp32 and bf16, (64, 10) fp32, and
(8192, 128256) bf16 when the machine has the memory (not in quick runs). Class-index targets,
mean reduction. Each forward+backward call computes the loss and the gradient of the logits
(``torch.autograd.grad``), so both libraries allocate their gradient every call.

Providers:

- ``bigmodel_native``: :func:`bigmodel_native.ops.cross_entropy` through autograd;
- ``torch``: ``F.cross_entropy`` through autograd;
- ``bigmodel_native_inplace`` (forward+backward only): the in-place mode's work, i.e. the forward
  op then the in-place backward op writing the gradient into the logits' buffer. It is timed on
  the op pair rather than through autograd because autograd refuses the in-place mode on a leaf
  tensor, which a benchmark's logits are; the autograd layer adds microseconds to a call of
  tens of milliseconds. The logits then hold a gradient, so later rounds run on gradient values:
  the kernel is branch-free, so its time does not depend on the values.

:func:`peak_extra_bytes` measures the peak memory a forward+backward adds on top of the logits,
in a fresh process per provider (RSS high-water mark: tracemalloc does not see torch's buffers).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..ops import cross_entropy
from .harness import OURS, Case

SUITE = "ce"
INPLACE = "bigmodel_native_inplace"
TORCH = "torch"

OPS = torch.ops.bigmodel_native


def _inputs(n: int, c: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g).to(dtype)
    t = torch.randint(0, c, (n,), generator=g)
    return x, t


def _fwd(fn: Callable, x: torch.Tensor, t: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn(x, t)

    return run


def _fwd_bwd(fn: Callable, x: torch.Tensor, t: torch.Tensor) -> Callable[[], object]:
    x = x.detach().requires_grad_()

    def run() -> object:
        return torch.autograd.grad(fn(x, t), x)

    return run


def _inplace(x: torch.Tensor, t: torch.Tensor) -> Callable[[], object]:
    x = x.clone()
    one = torch.ones((), dtype=x.dtype)

    def run() -> object:
        _, lse, asum, tw = OPS.cross_entropy_forward(x, t, None, 1, -100, 0.0)
        OPS.cross_entropy_backward_(one, x, t, None, lse, asum, tw, 1, -100, 0.0)
        return x

    return run


def _bytes(n: int, c: int, dtype: torch.dtype, backward: bool) -> float:
    # Forward reads the logits once; the backward reads them again and writes the gradient.
    size = torch.empty((), dtype=dtype).element_size()
    return (3.0 if backward else 1.0) * n * c * size


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def case_pair(
    label: str, n: int, c: int, dtype: torch.dtype, rounds: int, inplace: bool = True
) -> list[Case]:
    """The forward and forward+backward cases of one shape."""
    x, t = _inputs(n, c, dtype)
    fb = {OURS: _fwd_bwd(cross_entropy, x, t), TORCH: _fwd_bwd(F.cross_entropy, x, t)}
    if inplace:
        fb[INPLACE] = _inplace(x, t)
    warm = 3 if n * c < 1 << 20 else 1
    return [
        Case(
            SUITE,
            f"{label} fwd",
            {OURS: _fwd(cross_entropy, x, t), TORCH: _fwd(F.cross_entropy, x, t)},
            bytes_moved=_bytes(n, c, dtype, False),
            rounds=rounds,
            warmup=warm,
        ),
        Case(
            SUITE, f"{label} fwd+bwd", fb, bytes_moved=_bytes(n, c, dtype, True), rounds=rounds, warmup=warm
        ),
    ]


def cases(quick: bool = False, large: bool | None = None) -> list[Case]:
    """The suite; ``large`` (default: unless quick) adds the (8192, 128256) bf16 pair."""
    rounds = 5 if quick else 7
    out = [
        *case_pair("a: (4096, 32000) fp32", 4096, 32000, torch.float32, rounds),
        *case_pair("b: (4096, 32000) bf16", 4096, 32000, torch.bfloat16, rounds),
        *case_pair("c: (64, 10) fp32", 64, 10, torch.float32, rounds * 40, inplace=False),
    ]
    # 2.1 GB of logits; torch's forward+backward holds about three times that.
    if (not quick if large is None else large) and _mem_available() > 12 << 30:
        out += case_pair("d: (8192, 128256) bf16", 8192, 128256, torch.bfloat16, 3)
    return out


# ----------------------------------------------------------------------------- peak memory


def _peak_child(provider: str, n: int, c: int, dtype_name: str, threads: int) -> int:
    """Runs in the fresh process: the RSS high-water mark one forward+backward adds."""
    torch.set_num_threads(threads)
    x, t = _inputs(n, c, getattr(torch, dtype_name))
    x.add_(0)  # every page of the logits resident before the baseline
    providers = {OURS: _fwd_bwd, TORCH: _fwd_bwd, INPLACE: None}
    if providers[provider] is None:
        fn = _inplace(x, t)
        del x  # _inplace runs on its own copy
    else:
        fn = _fwd_bwd(cross_entropy if provider == OURS else F.cross_entropy, x, t)
    before = _rss_high_water()
    out = fn()
    after = _rss_high_water()
    del out
    return after - before


def _rss_high_water() -> int:
    """This address space's peak resident set (VmHWM), in bytes.

    Not ``getrusage().ru_maxrss``: Linux carries that over exec from the process that spawned
    this one, so under a large parent (a pytest session that already ran other benchmarks) it
    starts above anything this process does and the difference reads 0.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_extra_bytes(provider: str, n: int, c: int, dtype: torch.dtype, threads: int = 1) -> int:
    """Peak RSS a first forward+backward adds above the resident logits, in a fresh process."""
    name = str(dtype).removeprefix("torch.")
    code = (
        "from bigmodel_native.benchmarks.cross_entropy import _peak_child; "
        f"print(_peak_child({provider!r}, {n}, {c}, {name!r}, {threads}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"peak-memory child failed: {run.stderr[-2000:]}")
    return int(run.stdout.strip().splitlines()[-1])
