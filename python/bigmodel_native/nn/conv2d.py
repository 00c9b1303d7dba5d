"""``Conv2d``: ``torch.nn.Conv2d`` whose forward runs :func:`bigmodel_native.ops.conv2d`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from ..ops.conv2d import conv2d


class Conv2d(torch.nn.Conv2d):
    """A subclass of ``torch.nn.Conv2d``: same constructor, parameters, initialisation and
    ``state_dict``. A ``padding_mode`` other than ``"zeros"`` pads the input first with
    ``torch.nn.functional.pad``, exactly as torch's module does, then convolves unpadded."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(padded, weight, bias, self.stride, _pair(0), self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
