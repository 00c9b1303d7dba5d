"""PNG plots of training runs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .history import History  # noqa: E402


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_history(history: History, path: str | os.PathLike[str], title: str = "") -> Path:
    """Loss curves (train and validation) and, where logged, accuracy curves, per epoch."""
    h = history.history
    epochs = h.get("epoch", [])
    panels = [("loss", "val_loss")]
    if "accuracy" in h or "val_accuracy" in h:
        panels.append(("accuracy", "val_accuracy"))
    if "d_loss" in h:
        panels = [("d_loss", "g_loss")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, keys in zip(axes[0], panels, strict=True):
        for k in keys:
            if k in h and any(v is not None for v in h[k]):
                ax.plot(epochs, h[k], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(keys[0].replace("d_", ""))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike[str],
    titles: Sequence[str] | None = None,
    ncols: int = 5,
    title: str = "",
    title_colors: Sequence[str] | None = None,
) -> Path:
    """A grid of (N, C, H, W) images in [0, 1] (C = 1 or 3), each with an optional title."""
    images = images.detach().float().cpu().clamp(0, 1)
    n = len(images)
    nrows = max(1, (n + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 2.1 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        if titles is not None:
            color = title_colors[i] if title_colors is not None else "black"
            ax.set_title(titles[i], fontsize=8, color=color)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    m = torch.tensor(cm, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(m.numpy(), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            v = int(m[i, j])
            if v:
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if m[i, j] > m.max() / 2 else "black",
                )
    fig.colorbar(im, ax=ax)
    return _save(fig, path)
