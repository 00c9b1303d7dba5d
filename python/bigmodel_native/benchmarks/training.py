"""S3 training throughput: the seed CNN on bigmodel_native against the same model and loop in plain torch.

Each provider runs the same loop (zero_grad, forward, cross-entropy, backward, Adam step) over the
same pre-made batches of 64 random 28x28 images, from the same initial weights:

- ``bigmodel_native``: :class:`~bigmodel_native.models.MnistCNN` (its Conv2d from ``models._layers``:
  ours where the kernel exists, else torch's), ``models._layers.cross_entropy``, our Adam.
- ``torch``: the same stack from ``torch.nn``, ``F.cross_entropy`` and ``torch.optim.Adam`` with its
  defaults (foreach on CPU).

One call is ``BATCHES_PER_CALL`` training steps; images/s = 64 x steps / median call time.
``IMPLEMENTATIONS`` (recorded with the results) says which building blocks were really ours.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models import MnistCNN, _layers
from ..optim import Adam
from .harness import OURS, Case

SUITE = "train"
BATCH = 64
BATCHES_PER_CALL = 10
TORCH = "torch"


def plain_torch_s3() -> nn.Module:
    """The S3 stack written with torch.nn only."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(576, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(BATCH, 1, 28, 28, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
        for _ in range(n)
    ]


def _loop(model: nn.Module, opt: torch.optim.Optimizer, loss_fn, batches) -> Callable[[], None]:
    it = [0]

    def call() -> None:
        for _ in range(BATCHES_PER_CALL):
            x, y = batches[it[0] % len(batches)]
            it[0] += 1
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

    return call


def providers() -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    ours = MnistCNN()
    ref = plain_torch_s3()
    with torch.no_grad():
        for p_ref, p_ours in zip(ref.parameters(), ours.parameters(), strict=True):
            p_ref.copy_(p_ours)
    batches = _batches(BATCHES_PER_CALL * 2)
    return {
        OURS: _loop(ours, Adam(ours.parameters(), lr=1e-3), _layers.cross_entropy, batches),
        TORCH: _loop(ref, torch.optim.Adam(ref.parameters(), lr=1e-3), F.cross_entropy, batches),
    }


def images_per_call() -> int:
    return BATCH * BATCHES_PER_CALL


def cases(quick: bool = False) -> list[Case]:
    return [
        Case(
            SUITE,
            f"S3 train step, batch {BATCH} x {BATCHES_PER_CALL}",
            providers(),
            rounds=4 if quick else 8,
            warmup=1 if quick else 2,
        )
    ]


def implementations() -> dict[str, str]:
    return dict(_layers.IMPLEMENTATIONS)
