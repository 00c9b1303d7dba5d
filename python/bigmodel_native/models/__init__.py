"""The seed systems (S1-S7) as plain ``torch.nn.Module`` s a user can train in any loop.

Building blocks that have a bigmodel_native kernel (convolution, attention, cross-entropy) come
from :mod:`._layers`, which says in ``IMPLEMENTATIONS`` which implementation each one uses.
"""

from __future__ import annotations

from . import _layers
from .cnn import CifarCNN, MnistCNN, SmallCNN
from .dense import MnistMLP, SmallDense, TinyDense
from .gan import Discriminator, Generator
from .init import keras_init_
from .transformer import CharTransformerLM, TabularTransformer, TransformerBlock, causal_mask

__all__ = [
    "CharTransformerLM",
    "CifarCNN",
    "Discriminator",
    "Generator",
    "MnistCNN",
    "MnistMLP",
    "SmallCNN",
    "SmallDense",
    "TabularTransformer",
    "TinyDense",
    "TransformerBlock",
    "_layers",
    "causal_mask",
    "keras_init_",
]
