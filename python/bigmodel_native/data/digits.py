"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, always installed with it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_digits(test_fraction: float = 0.2, seed: int = 0, side: int | None = None):
    """Returns ``((x_train, y_train), (x_test, y_test))``: float32 (N, 1, s, s) in [0, 1], int64 labels.

    ``side`` resizes the 8x8 images (bilinear), e.g. to 28 for the MNIST-format models. The split
    is a fixed stratification-free shuffle under ``seed``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    if side is not None and side != 8:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return (x[train], y[train]), (x[test], y[test])
