"""The GAN loop for S5: alternate discriminator and generator steps with binary cross-entropy.

Per batch: ``L_D = -log D(x) - log(1 - D(G(z)))`` (the mean over the batch of each term, summed),
one step of the discriminator's optimizer; then ``L_G = -log D(G(z))`` on fresh noise, one step of
the generator's. Deterministic under ``seed`` like :func:`~.loop.fit`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..models.gan import Discriminator, Generator
from .checkpoint import load_checkpoint, save_checkpoint
from .history import History
from .loop import PROGRESS_MIN_BATCHES, _epoch_seed


def fit_gan(
    generator: Generator,
    discriminator: Discriminator,
    images: Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    g_optimizer: torch.optim.Optimizer,
    d_optimizer: torch.optim.Optimizer,
    seed: int | None = None,
    verbose: int = 1,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> History:
    """Trains the pair on ``images`` (N, 1, 28, 28) in [0, 1].

    The History logs ``d_loss``, ``g_loss``, and the mean D(x) and D(G(z)) per epoch.
    """
    dev = next(generator.parameters()).device
    images = images.to(dev)
    n = len(images)
    n_batches = (n + batch_size - 1) // batch_size
    pair = torch.nn.ModuleDict({"generator": generator, "discriminator": discriminator})
    opts = _OptimizerPair(g_optimizer, d_optimizer)
    hist = History()
    start = 0
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        loaded = load_checkpoint(checkpoint_dir, pair, opts)  # type: ignore[arg-type]
        if loaded is not None:
            hist, trainer_state = loaded
            torch.set_rng_state(trainer_state["rng"])
            start = hist.epochs_done
    generator.train()
    discriminator.train()
    for epoch in range(start, epochs):
        gen = None
        if seed is not None:
            s = _epoch_seed(seed, epoch)
            torch.manual_seed(s)
            gen = torch.Generator().manual_seed(s)
        order = torch.randperm(n, generator=gen).to(dev)
        sums = torch.zeros(4, dtype=torch.float64, device=dev)
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="batch",
            leave=False,
            disable=verbose != 1 or n_batches < PROGRESS_MIN_BATCHES,
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        for b in range(n_batches):
            real = images[order[b * batch_size : (b + 1) * batch_size]]
            m = len(real)
            z = torch.randn(m, generator.noise_dim, device=dev)
            fake = generator(z)
            d_real = discriminator(real)
            d_fake = discriminator(fake.detach())
            d_loss = F.binary_cross_entropy(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy(
                d_fake, torch.zeros_like(d_fake)
            )
            d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optimizer.step()

            z = torch.randn(m, generator.noise_dim, device=dev)
            d_gen = discriminator(generator(z))
            g_loss = F.binary_cross_entropy(d_gen, torch.ones_like(d_gen))
            g_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            g_optimizer.step()
            with torch.no_grad():
                sums += (
                    torch.stack([d_loss.detach(), g_loss.detach(), d_real.mean(), d_fake.mean()]).double() * m
                )
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - t0
        d, g, dx, dgz = (sums / n).tolist()
        logs = {
            "epoch": epoch + 1,
            "d_loss": d,
            "g_loss": g,
            "d_real": dx,
            "d_fake": dgz,
            "time_s": elapsed,
            "samples_per_s": n / elapsed if elapsed > 0 else float("inf"),
        }
        hist.append(logs)
        if verbose:
            print(
                f"epoch {epoch + 1}/{epochs}  d_loss {d:.4f}  g_loss {g:.4f}  "
                f"D(x) {dx:.3f}  D(G(z)) {dgz:.3f}  {elapsed:.1f}s",
                flush=True,
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, logs)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, pair, opts, hist, {"rng": torch.get_rng_state()})  # type: ignore[arg-type]
    return hist


class _OptimizerPair:
    """Both optimizers behind the one ``state_dict``/``load_state_dict`` a checkpoint expects."""

    def __init__(self, g: torch.optim.Optimizer, d: torch.optim.Optimizer) -> None:
        self.g, self.d = g, d

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.g.state_dict(), "discriminator": self.d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["generator"])
        self.d.load_state_dict(state["discriminator"])
