"""S5: a GAN on 28x28x1 images in [0, 1].

The generator maps noise(100) through a dense layer to 128 x 7 x 7, then twice doubles the
resolution (nearest upsampling followed by a 3x3 convolution, which avoids the checkerboard of
transposed convolutions) and ends in a sigmoid. The discriminator is two strided 4x4
convolutions with LeakyReLU and a dense layer to P(real). Convolutions come from :mod:`._layers`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import _layers

NOISE_DIM = 100


class Generator(nn.Module):
    """noise (N, noise_dim) -> images (N, 1, 28, 28) in [0, 1]."""

    def __init__(self, noise_dim: int = NOISE_DIM, width: int = 128) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.width = width
        self.project = nn.Sequential(
            nn.Linear(noise_dim, width * 7 * 7), nn.BatchNorm1d(width * 7 * 7), nn.ReLU()
        )
        conv = _layers.Conv2d
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv(width // 2, 1, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.project(z).view(-1, self.width, 7, 7))

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dev = next(self.parameters()).device
        return torch.randn(n, self.noise_dim, generator=generator).to(dev)


class Discriminator(nn.Module):
    """images (N, 1, 28, 28) -> P(real) of shape (N, 1)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        conv = _layers.Conv2d
        self.net = nn.Sequential(
            conv(1, width // 2, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            conv(width // 2, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Flatten(),
            nn.Linear(width * 7 * 7, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
