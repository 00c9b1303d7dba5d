"""conv2d: ours against ``torch.nn.functional.conv2d`` (oneDNN) at the seed CNNs' layer shapes.

Batch 64, 3x3 kernels, valid padding, with bias: the MNIST CNN's three layers (1->32 on 28x28,
32->64 on 13x13, 64->64 on 5x5) and the CIFAR CNN's first two (3->32 on 32x32, 32->64 on 15x15).
Each shape is timed forward only and forward+backward (and the first two MNIST layers also as
conv + ReLU: ours fused in one call, torch's ``relu(F.conv2d)``; the layers the seed CNNs pool
also as conv + ReLU + 2x2 max-pooling: ours :func:`conv2d_relu_max_pool2d`, torch's
``max_pool2d(relu(F.conv2d))``, from a pooled grad_output); the backward computes all three
gradients (input, weight, bias) from one fixed random grad_output through ``torch.autograd.grad``,
as the torch anchors in the issue did (input requiring grad, so the first layers pay for their
input gradient too). FLOP counts: 2*N*Cout*OH*OW*Cin*9 per pass, three passes for fwd+bwd (the
pooled cases too, although ours does not form the pixels no window reads, and its backward for
16+ input channels does a quarter of that work: only window maxima carry a gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..ops import conv2d, conv2d_relu, conv2d_relu_max_pool2d
from .harness import OURS, Case

SUITE = "conv"
TORCH = "torch"
BATCH = 64
#: (name, c_in, c_out, input height = width)
SHAPES = [
    ("1->32 28x28", 1, 32, 28),
    ("32->64 13x13", 32, 64, 13),
    ("64->64 5x5", 64, 64, 5),
    ("3->32 32x32", 3, 32, 32),
    ("32->64 15x15", 32, 64, 15),
]


def _tensors(c_in: int, c_out: int, hw: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, c_in, hw, hw, generator=g).requires_grad_()
    w = (torch.randn(c_out, c_in, 3, 3, generator=g) / (3 * c_in**0.5)).requires_grad_()
    b = torch.randn(c_out, generator=g).requires_grad_()
    gy = torch.randn(BATCH, c_out, hw - 2, hw - 2, generator=g)
    return x, w, b, gy


def _forward(fn: Callable, x, w, b) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn(x, w, b)

    return run


def _forward_backward(fn: Callable, x, w, b, gy) -> Callable[[], object]:
    def run() -> object:
        return torch.autograd.grad(fn(x, w, b), (x, w, b), gy)

    return run


#: Layers also timed as conv + ReLU: ours fused (:func:`conv2d_relu`) against torch.relu(F.conv2d).
RELU_SHAPES = ["1->32 28x28", "32->64 13x13"]


def _torch_conv_relu(x, w, b):
    return torch.relu(F.conv2d(x, w, b))


#: Layers the seed CNNs pool, also timed as conv + ReLU + max_pool2d(2), fused on our side.
POOL_SHAPES = ["1->32 28x28", "32->64 13x13", "3->32 32x32", "32->64 15x15"]


def _torch_conv_relu_pool(x, w, b):
    return F.max_pool2d(torch.relu(F.conv2d(x, w, b)), 2)


def flops(c_in: int, c_out: int, hw: int) -> float:
    return 2.0 * BATCH * c_out * (hw - 2) ** 2 * c_in * 9


def _fwd_bwd_case(label: str, ours: Callable, theirs: Callable, xwb, grad, f: float, rounds: int) -> Case:
    """Forward+backward of ours and torch's on the same tensors: three passes' FLOPs."""
    runs = {OURS: _forward_backward(ours, *xwb, grad), TORCH: _forward_backward(theirs, *xwb, grad)}
    return Case(SUITE, label, runs, flops=3 * f, rounds=rounds)


def cases(quick: bool = False) -> list[Case]:
    rounds = 5 if quick else 15
    out = []
    for name, c_in, c_out, hw in SHAPES:
        x, w, b, gy = _tensors(c_in, c_out, hw)
        f = flops(c_in, c_out, hw)
        forward = {OURS: _forward(conv2d, x, w, b), TORCH: _forward(F.conv2d, x, w, b)}
        out.append(Case(SUITE, f"fwd {name}", forward, flops=f, rounds=rounds))
        out.append(_fwd_bwd_case(f"fwd+bwd {name}", conv2d, F.conv2d, (x, w, b), gy, f, rounds))
        if name in RELU_SHAPES:
            label = f"fwd+bwd conv+ReLU {name}"
            out.append(_fwd_bwd_case(label, conv2d_relu, _torch_conv_relu, (x, w, b), gy, f, rounds))
        if name in POOL_SHAPES:
            pooled = (hw - 2) // 2
            gp = torch.randn(BATCH, c_out, pooled, pooled, generator=torch.Generator().manual_seed(1))
            label = f"fwd+bwd conv+ReLU+pool {name}"
            out.append(
                _fwd_bwd_case(label, conv2d_relu_max_pool2d, _torch_conv_relu_pool, (x, w, b), gp, f, rounds)
            )
    return out
