"""``bigmodel_native.nn.CrossEntropyLoss``: torch's module with the fused Rust kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.cross_entropy import cross_entropy, cross_entropy_inplace_backward


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Drop-in for ``torch.nn.CrossEntropyLoss``: same constructor, buffers and ``state_dict``.

    The forward runs :func:`bigmodel_native.ops.cross_entropy`. With the keyword-only
    ``inplace_backward=True`` it runs
    :func:`bigmodel_native.ops.cross_entropy_inplace_backward` instead, whose backward writes the
    gradient into the logits' own buffer (see that function for when it refuses).
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if self.inplace_backward:
            return cross_entropy_inplace_backward(
                input, target, weight=self.weight, ignore_index=self.ignore_index,
                reduction=self.reduction, label_smoothing=self.label_smoothing,
            )  # fmt: skip
        return cross_entropy(
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return "inplace_backward=True" if self.inplace_backward else ""
