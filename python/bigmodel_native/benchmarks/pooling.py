"""max_pool2d: ours against ``torch.nn.functional.max_pool2d`` at the seed CNNs' pooling shapes.

Batch 64, 2x2 windows at stride 2, after the first and second convolutions of the MNIST CNN
(32x26x26 and 64x11x11) and of the CIFAR CNN (32x30x30 and 64x13x13). Each shape is timed
forward only and forward+backward (the gradient of the input from one fixed random
grad_output, through ``torch.autograd.grad``). GB/s counts one read of the input and one write
of the output forward, plus the gradient's write and the indices' read backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..ops import max_pool2d
from .harness import OURS, Case

SUITE = "pool"
TORCH = "torch"
BATCH = 64
#: (name, channels, input height = width)
SHAPES = [
    ("32x26x26", 32, 26),
    ("64x11x11", 64, 11),
    ("32x30x30", 32, 30),
    ("64x13x13", 64, 13),
]


def _forward(fn: Callable, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn(x, 2)

    return run


def _forward_backward(fn: Callable, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        return torch.autograd.grad(fn(x, 2), x, gy)

    return run


def cases(quick: bool = False) -> list[Case]:
    rounds = 5 if quick else 25
    out = []
    for name, c, hw in SHAPES:
        g = torch.Generator().manual_seed(0)
        # Post-ReLU activations, as in the models: a quarter of the values are zeros.
        x = torch.randn(BATCH, c, hw, hw, generator=g).relu_().requires_grad_()
        gy = torch.randn(BATCH, c, hw // 2, hw // 2, generator=g)
        fwd_bytes = 4.0 * (x.numel() + gy.numel())
        bwd_bytes = fwd_bytes + 4.0 * x.numel() + 8.0 * gy.numel()
        out.append(
            Case(
                SUITE,
                f"fwd {name}",
                {OURS: _forward(max_pool2d, x), TORCH: _forward(F.max_pool2d, x)},
                bytes_moved=fwd_bytes,
                rounds=rounds,
            )
        )
        out.append(
            Case(
                SUITE,
                f"fwd+bwd {name}",
                {OURS: _forward_backward(max_pool2d, x, gy), TORCH: _forward_backward(F.max_pool2d, x, gy)},
                bytes_moved=bwd_bytes,
                rounds=rounds,
            )
        )
    return out
