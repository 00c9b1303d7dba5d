"""Adam step: ours against torch's for-loop, foreach and fused implementations.

Cases (from the foundation issue): (a) 16M fp32 params in 50 tensors, (b) 2,000 small tensors of
1-4K elements, (c) case (a) in bf16.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ..optim import Adam
from .harness import OURS, Case

SUITE = "adam"


def _params(sizes: list[int], dtype: torch.dtype, seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(n, generator=g).to(dtype)) for n in sizes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(dtype)
    return ps


def _providers(sizes: list[int], dtype: torch.dtype, torch_variants: dict[str, dict]) -> dict[str, Callable]:
    """Each provider gets its own copy of the parameters so that none shares state with another."""
    out: dict[str, Callable] = {OURS: Adam(_params(sizes, dtype, 0), lr=1e-3).step}
    for name, kwargs in torch_variants.items():
        out[name] = torch.optim.Adam(_params(sizes, dtype, 0), lr=1e-3, **kwargs).step
    return out


TORCH_VARIANTS = {
    "torch_forloop": {"foreach": False},
    "torch_foreach": {"foreach": True},
    "torch_fused": {"fused": True},
}


def _bytes(sizes: list[int], dtype: torch.dtype) -> float:
    # Reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq.
    return 7.0 * sum(sizes) * torch.empty((), dtype=dtype).element_size()


def cases(quick: bool = False) -> list[Case]:
    big = [320 * 1024] * 50
    rng = random.Random(0)
    small = [rng.randint(1024, 4096) for _ in range(2000)]
    rounds = 5 if quick else 15
    out = [
        Case(
            SUITE,
            "a: 16M fp32 in 50 tensors",
            _providers(big, torch.float32, TORCH_VARIANTS),
            bytes_moved=_bytes(big, torch.float32),
            rounds=rounds,
        ),
        Case(
            SUITE,
            "b: 2000 tensors of 1-4K fp32",
            _providers(small, torch.float32, TORCH_VARIANTS),
            bytes_moved=_bytes(small, torch.float32),
            rounds=rounds * 2,
        ),
        Case(
            SUITE,
            "c: 16M bf16 in 50 tensors",
            _providers(
                big, torch.bfloat16, {"torch_forloop": {"foreach": False}, "torch_fused": {"fused": True}}
            ),
            bytes_moved=_bytes(big, torch.bfloat16),
            rounds=rounds,
        ),
    ]
    return out
