"""``MaxPool2d`` on bigmodel_native's max-pooling kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.max_pool2d import max_pool2d


class MaxPool2d(torch.nn.MaxPool2d):
    """A subclass of ``torch.nn.MaxPool2d``: same constructor, attributes and ``repr``; its
    forward runs :func:`bigmodel_native.ops.max_pool2d`."""

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation,
            ceil_mode=self.ceil_mode, return_indices=self.return_indices,
        )  # fmt: skip
