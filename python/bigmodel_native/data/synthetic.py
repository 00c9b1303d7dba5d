"""The tutorials' random data (S1, S6 tutorial, S7), reproducible under a seed."""

from __future__ import annotations

import torch


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-12)


def random_classification(
    n: int = 100, features: int = 10, classes: int = 2, seed: int = 0, standardise: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """S1/S7: ``n`` x ``features`` Gaussian features and uniformly random labels.

    The labels carry no signal, so about ``1/classes`` accuracy on fresh samples is the honest result.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return (_standardise(x) if standardise else x), y


def random_regression(
    n: int = 1000, features: int = 10, seed: int = 0, noise: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """S6 tutorial: ``n`` x ``features`` inputs and a target the model can learn.

    The target is a fixed random linear map of the inputs plus a product of two of them and
    Gaussian noise, so a model that beats the mean predictor shows it learns something.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, generator=g) / features**0.5
    y = x @ w + 0.5 * x[:, 0] * x[:, 1] + noise * torch.randn(n, generator=g)
    return x, y


def train_test_split(x: torch.Tensor, y: torch.Tensor, test_fraction: float = 0.2, seed: int = 0):
    """Shuffled split; returns ``((x_train, y_train), (x_test, y_test))``."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(x) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return (x[train], y[train]), (x[test], y[test])
