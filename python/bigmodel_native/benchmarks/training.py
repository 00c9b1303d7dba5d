"""S3 training throughput: the seed CNN on bigmodel_native against the same model and loop in plain torch.

Each provider runs the same loop (zero_grad, forward, cross-entropy, backward, Adam step) over the
same pre-made batches of 64 random 28x28 images, from the same initial weights:

- ``bigmodel_native``: :class:`~bigmodel_native.models.MnistCNN` (its Conv2d from ``models._layers``:
  ours where the kernel exists, else torch's), ``models._layers.cross_entropy``, our Adam.
- ``torch``: the same stack from ``torch.nn``, ``F.cross_entropy`` and ``torch.optim.Adam`` with its
  defaults (foreach on CPU).

One call is ``BATCHES_PER_CALL`` training steps; images/s = 64 x steps / median call time.

A second case does the same for the S6 character-level LM at the CLI's default size (batch 32,
context 128, d_model 128, 4 post-norm blocks of 8 heads): ours is
:class:`~bigmodel_native.models.CharTransformerLM` as built (attention from ``models._layers``),
the baseline the same model with every attention module replaced by ``torch.nn.MultiheadAttention``
holding the same weights, ``F.cross_entropy`` and ``torch.optim.Adam``; tokens/s = 32 x 128 x
steps / median call time.
``IMPLEMENTATIONS`` (recorded with the results) says which building blocks were really ours.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models import CharTransformerLM, MnistCNN, _layers
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


def _loop(
    model: nn.Module, opt: torch.optim.Optimizer, loss_fn, batches, steps: int = BATCHES_PER_CALL
) -> Callable[[], None]:
    it = [0]

    def call() -> None:
        for _ in range(steps):
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


LM_BATCH, LM_CONTEXT, LM_VOCAB, LM_STEPS_PER_CALL = 32, 128, 100, 3


def _plain_torch_lm(ours: CharTransformerLM) -> nn.Module:
    ref = copy.deepcopy(ours)
    for block in ref.blocks:
        mine = block.attn
        plain = nn.MultiheadAttention(mine.embed_dim, mine.num_heads, dropout=mine.dropout, batch_first=True)
        with torch.no_grad():
            for p_ref, p_ours in zip(plain.parameters(), mine.parameters(), strict=True):
                p_ref.copy_(p_ours)
        block.attn = plain
    return ref


def lm_providers() -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    ours = CharTransformerLM(LM_VOCAB, context=LM_CONTEXT, d_model=128, num_layers=4)
    ref = _plain_torch_lm(ours)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(LM_STEPS_PER_CALL * 2):
        ids = torch.randint(0, LM_VOCAB, (LM_BATCH, LM_CONTEXT + 1), generator=g)
        batches.append((ids[:, :-1], ids[:, 1:]))

    def seq_loss(ce):
        return lambda out, y: ce(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    return {
        OURS: _loop(
            ours,
            Adam(ours.parameters(), lr=1e-3),
            seq_loss(_layers.cross_entropy),
            batches,
            LM_STEPS_PER_CALL,
        ),
        TORCH: _loop(
            ref,
            torch.optim.Adam(ref.parameters(), lr=1e-3),
            seq_loss(F.cross_entropy),
            batches,
            LM_STEPS_PER_CALL,
        ),
    }


def tokens_per_call() -> int:
    return LM_BATCH * LM_CONTEXT * LM_STEPS_PER_CALL


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
        ),
        Case(
            SUITE,
            f"S6 char-LM train step, {LM_BATCH} x {LM_CONTEXT} tokens x {LM_STEPS_PER_CALL}",
            lm_providers(),
            rounds=3 if quick else 5,
            warmup=1,
        ),
    ]


def implementations() -> dict[str, str]:
    return dict(_layers.IMPLEMENTATIONS)
