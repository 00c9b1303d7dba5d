"""CUDA kernels of the ``bigmodel_native::cross_entropy_*`` ops (the ops live in ``cross_entropy.py``).

The forward and backward run crates/bigmodel-cuda/kernels/cross_entropy.cu on the current stream,
on torch's memory, with no host synchronisation. The kernels take 2-D ``(N, C)`` logits with
class-index targets in fp32 / bf16 / fp16; a 1-D input is one row, and an ``(N, C, d1, ...)``
input is moved to ``(N * d1 * ..., C)`` first (one transposed copy, as torch's own CUDA loss does
for that layout). Class-probability targets and fp64 are refused before these are reached.

A target outside ``[0, C)`` other than ``ignore_index`` is never used as an index: that row's loss
is NaN (torch raises an asynchronous device-side assert instead; checking on the host would cost a
synchronisation every step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _cuda
from . import cross_entropy as _ce  # defines the ops before their CUDA kernels are registered
from ._library import LIB

_REDUCTION_NAMES = ("none", "mean", "sum")


def _rows(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The logits as ``(rows, C)`` and the targets as ``(rows,)`` int64."""
    if input.dim() == 1:
        x = input.view(1, -1)
    elif input.dim() == 2:
        x = input
    else:
        x = input.movedim(1, -1).reshape(-1, input.shape[1])
    return x, target.reshape(-1).long()


def _forward_cuda(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, t = _rows(input, target)
    loss, lse, total = _cuda.cross_entropy_forward(
        x, t, weight, ignore_index=ignore_index, reduction=_REDUCTION_NAMES[reduction],
        label_smoothing=label_smoothing,
    )  # fmt: skip
    loss = loss.reshape(_ce._loss_shape(input, target, reduction))
    asum = torch.empty(0, device=input.device, dtype=torch.float32)
    total = torch.zeros(1, device=input.device, dtype=torch.float32) if total is None else total.view(1)
    return loss, lse, asum, total


def _grad_rows(
    grad_output: Tensor,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    total_weight: Tensor,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    inplace: bool,
) -> Tensor:
    x, t = _rows(input, target)
    g = grad_output.reshape(-1) if reduction == 0 else grad_output.reshape(())
    return _cuda.cross_entropy_backward(
        g, x, t, lse, total_weight, weight, ignore_index=ignore_index,
        reduction=_REDUCTION_NAMES[reduction], label_smoothing=label_smoothing, inplace=inplace,
    )  # fmt: skip


def _backward_cuda(
    grad_output: Tensor,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    asum: Tensor,
    total_weight: Tensor,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
) -> Tensor:
    grad = _grad_rows(
        grad_output, input, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
        inplace=False,
    )  # fmt: skip
    if input.dim() <= 2:
        return grad.view(input.shape)
    moved = (input.shape[0], *input.shape[2:], input.shape[1])
    return grad.view(moved).movedim(-1, 1).contiguous()


def _backward_inplace_cuda(
    grad_output: Tensor,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    asum: Tensor,
    total_weight: Tensor,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
) -> None:
    if not input.is_contiguous() or input.dim() > 2:
        raise RuntimeError(
            "cross_entropy_backward_: on CUDA the logits must be contiguous (N, C) or (C,) "
            "to hold their gradient"
        )
    _grad_rows(
        grad_output, input, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
        inplace=True,
    )  # fmt: skip


_ce.KERNELS["cuda"] = {
    "cross_entropy_forward": _forward_cuda,
    "cross_entropy_backward": _backward_cuda,
    "cross_entropy_backward_": _backward_inplace_cuda,
}
for _op, _fn in _ce.KERNELS["cuda"].items():
    LIB.impl(_op, _fn, "CUDA")
