"""The convolutional seed systems: S3 (MNIST-format CNN) and S4 (CIFAR-10 CNN).

Both are the same stack: Conv(c->32, 3x3) - ReLU - MaxPool2 - Conv(32->64, 3x3) - ReLU - MaxPool2 -
Conv(64->64, 3x3) - ReLU - Flatten - Linear(flat, 64) - ReLU - Linear(64, 10), valid padding. On
28x28x1 the flattened size is 3*3*64 = 576, on 32x32x3 it is 4*4*64 = 1024. The convolutions and
poolings come from :mod:`._layers` (ours when the package has the kernel); weights start from Keras'
initialisation (see :mod:`.init`).
"""

from __future__ import annotations

from torch import Tensor, nn

from . import _layers
from .init import keras_init_


def _flat_size(side: int) -> int:
    side = side - 2  # conv 3x3, valid
    side //= 2  # max pool 2
    side = side - 2
    side //= 2
    side = side - 2
    return 64 * side * side


class SmallCNN(nn.Module):
    """The S3/S4 stack for ``in_channels`` x ``side`` x ``side`` images; returns logits."""

    def __init__(self, in_channels: int = 1, side: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        conv, pool = _layers.Conv2d, _layers.MaxPool2d
        self.features = nn.Sequential(
            conv(in_channels, 32, 3),
            nn.ReLU(),
            pool(2),
            conv(32, 64, 3),
            nn.ReLU(),
            pool(2),
            conv(64, 64, 3),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_size(side), 64), nn.ReLU(), nn.Linear(64, num_classes)
        )
        keras_init_(self)  # the tutorials' (Keras) initialisation

    def forward(self, x: Tensor) -> Tensor:
        # Each Conv2d-ReLU pair runs as one fused call on CPU (same values, same state_dict).
        return self.classifier(_layers.run_sequential(self.features, x))


class MnistCNN(SmallCNN):
    """S3: the stack on 28x28x1 images (Linear(576, 64) after flatten)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(1, 28, num_classes)


class CifarCNN(SmallCNN):
    """S4: the stack on 32x32x3 images (Linear(1024, 64) after flatten)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(3, 32, num_classes)
