"""``MaxPool2d`` on bigmodel_native's max-pooling kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.max_pool2d import max_pool2d


class MaxPool2d(torch.nn.MaxPool2d):
    """A subclass of ``torch.nn.MaxPool2d``: same constructor, attributes and ``repr``; on CPU
    tensors its forward runs :func:`bigmodel_native.ops.max_pool2d`.

    The kernel is CPU-only (on GPUs torch's pooling is already a single fast kernel): on any
    other device this module runs torch's own ``MaxPool2d.forward``, so that a model built from
    it still moves to CUDA. ``bigmodel_native.models._layers.IMPLEMENTATIONS`` says so.
    """

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if input.device.type != "cpu":
            return super().forward(input)
        return max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation,
            ceil_mode=self.ceil_mode, return_indices=self.return_indices,
        )  # fmt: skip
