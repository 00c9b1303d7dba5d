"""Drop-in ``torch.nn`` modules whose forward runs bigmodel_native's ops.

Each module subclasses (or mirrors) its torch counterpart: same constructor, parameters and
``state_dict``, so a model can swap ``torch.nn.X`` for ``bigmodel_native.nn.X`` and load the same
checkpoints.
"""

from __future__ import annotations

from .attention import MultiheadAttention
from .conv2d import Conv2d
from .cross_entropy import CrossEntropyLoss
from .pooling import MaxPool2d

__all__: list[str] = ["Conv2d", "CrossEntropyLoss", "MaxPool2d", "MultiheadAttention"]
