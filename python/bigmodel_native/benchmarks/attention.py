"""Attention: ours against torch's CPU ``F.scaled_dot_product_attention``, forward and fwd+bwd.

Shapes (B, H, L, D) from the attention issue: (a) 8, 8, 512, 64; (b) the same, causal;
(c) 4, 8, 2048, 64, causal. fp32 throughout.

:func:`peak_memory` is the O(L) memory demonstration: forward + backward at L = S = 8192 in a
fresh subprocess, peak resident memory above the inputs, against the bytes one L x S score
matrix per head would take.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..ops import scaled_dot_product_attention
from .harness import OURS, Case

SUITE = "attention"
TORCH = "torch_sdpa"
#: Batch of case (c): the issue's 4 scaled down to 2 for the CI time budget.
C_BATCH = 4


def _inputs(b: int, h: int, n: int, d: int, grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, n, d, generator=g).requires_grad_(grad) for _ in range(3)]


def _fwd(fn: Callable, b: int, h: int, n: int, d: int, causal: bool) -> Callable[[], object]:
    q, k, v = _inputs(b, h, n, d, grad=False)
    return lambda: fn(q, k, v, is_causal=causal)


def _fwd_bwd(fn: Callable, b: int, h: int, n: int, d: int, causal: bool) -> Callable[[], object]:
    q, k, v = _inputs(b, h, n, d, grad=True)
    g = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(1))

    def run() -> object:
        out = fn(q, k, v, is_causal=causal)
        return torch.autograd.grad(out, (q, k, v), g)

    return run


def _flops(b: int, h: int, n: int, d: int, causal: bool, backward: bool) -> float:
    # Two L x S x D products forward, five with the recomputed scores backward.
    per_product = 2.0 * b * h * n * n * d * (0.5 if causal else 1.0)
    return per_product * (2 + (5 if backward else 0))


SHAPES = {
    "a: 8x8x512x64": (8, 8, 512, 64, False),
    "b: 8x8x512x64 causal": (8, 8, 512, 64, True),
    f"c: {C_BATCH}x8x2048x64 causal": (C_BATCH, 8, 2048, 64, True),
}


def cases(quick: bool = False) -> list[Case]:
    out = []
    for name, (b, h, n, d, causal) in SHAPES.items():
        rounds = (3 if quick else 7) if n <= 512 else (2 if quick else 5)
        for mode, make, bwd in (("fwd", _fwd, False), ("fwd+bwd", _fwd_bwd, True)):
            out.append(
                Case(
                    SUITE,
                    f"{name} {mode}",
                    {
                        OURS: make(scaled_dot_product_attention, b, h, n, d, causal),
                        TORCH: make(F.scaled_dot_product_attention, b, h, n, d, causal),
                    },
                    flops=_flops(b, h, n, d, causal, bwd),
                    rounds=rounds,
                    warmup=1,
                )
            )
    return out


def causal_skip_case() -> Case:
    """Ours with and without ``is_causal`` on one shape (4x8x1024x64 forward), interleaved."""
    b, h, n, d = 4, 8, 1024, 64
    return Case(
        SUITE,
        f"{b}x{h}x{n}x{d} fwd, ours causal vs ours full",
        {
            "full": _fwd(scaled_dot_product_attention, b, h, n, d, False),
            "causal": _fwd(scaled_dot_product_attention, b, h, n, d, True),
        },
        rounds=5,
        warmup=1,
    )


_PEAK_SCRIPT = """
import json, sys, torch
from bigmodel_native.ops import scaled_dot_product_attention as sdpa
n, h, d, threads = (int(x) for x in sys.argv[1:5])
torch.set_num_threads(threads)
def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, h, n, d, generator=g).requires_grad_() for _ in range(3))
grad = torch.randn(1, h, n, d, generator=g)
small = [t.detach()[:, :, :64].clone().requires_grad_() for t in (q, k, v)]
torch.autograd.grad(sdpa(*small, is_causal=True), small, torch.ones(1, h, 64, d))  # warm the pool
base = rss("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current RSS
out = sdpa(q, k, v, is_causal=True)
dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
peak = rss("VmHWM")
print(json.dumps({"base": base, "peak": peak}))
"""


def peak_memory(n: int = 8192, heads: int = 2, d: int = 64, threads: int = 2) -> dict[str, float]:
    """Peak extra resident memory of causal forward + backward at L = S = ``n``, in MiB."""
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(n), str(heads), str(d), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 1024.0 * 1024.0
    tensor = heads * n * d * 4 / mib
    return {
        "seq_len": n,
        "heads": heads,
        "head_dim": d,
        "peak_extra_mib": (r["peak"] - r["base"]) / mib,
        # out, dq, dk, dv are results the caller keeps: four input-sized tensors.
        "results_mib": 4 * tensor,
        "one_score_matrix_per_head_mib": heads * n * n * 4 / mib,
    }
