"""The dense seed systems: S1 (tiny classifier), S2 (MNIST MLP) and S7 (small classifier).

Every model returns logits and starts from Keras' initialisation (see :mod:`.init`); the softmax
the tutorials put in the last layer is applied by the cross-entropy loss (same maths, numerically
stable) and by :func:`bigmodel_native.training.predict`.
"""

from __future__ import annotations

from torch import Tensor, nn

from .init import keras_init_


class TinyDense(nn.Module):
    """S1: Linear(10, 10) - ReLU - Linear(10, 2)."""

    def __init__(self, in_features: int = 10, hidden: int = 10, num_classes: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        keras_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MnistMLP(nn.Module):
    """S2: 784-256-128-64-10 with ReLU; accepts (N, 784) or (N, 1, 28, 28) images."""

    def __init__(
        self, in_features: int = 784, hidden: tuple[int, ...] = (256, 128, 64), num_classes: int = 10
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        keras_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallDense(nn.Module):
    """S7: Linear(10, 64) - ReLU - Linear(64, 64) - ReLU - Linear(64, 2)."""

    def __init__(self, in_features: int = 10, hidden: int = 64, num_classes: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        keras_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
