"""CIFAR-10, binary version: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``.

Each record is 1 label byte followed by 3 x 32 x 32 image bytes (red, green, blue planes). The
Python version of the set is a pickle, which can run code when loaded: it is never read here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

RECORD = 1 + 3 * 32 * 32
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class CifarFormatError(ValueError):
    """A CIFAR-10 binary file is truncated or corrupt; the message names the file."""


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file -> (uint8 images (N, 3, 32, 32), uint8 labels (N,))."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % RECORD:
        raise CifarFormatError(
            f"{path}: {data.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
            "(truncated or not the binary version)"
        )
    rec = data.reshape(-1, RECORD)
    labels = rec[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise CifarFormatError(f"{path}: record {bad} has label {int(labels[bad])}, outside 0-9")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(
    directory: str | os.PathLike[str], split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads ``train`` (data_batch_1..5.bin) or ``test`` (test_batch.bin) from ``directory``.

    The files may sit in ``directory`` itself or in its ``cifar-10-batches-bin`` subfolder.
    Returns float32 images (N, 3, 32, 32) in [0, 1] and int64 labels.
    """
    d = Path(directory)
    if not (d / "test_batch.bin").is_file() and (d / "cifar-10-batches-bin").is_dir():
        d = d / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{d}: missing CIFAR-10 binary files {', '.join(missing)}")
    parts = [read_cifar_batch(d / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels.astype(np.int64))


def write_cifar_batch(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray) -> None:
    """Writes uint8 images (N, 3, 32, 32) and labels in the binary format (used by the tests)."""
    rec = np.concatenate(
        [np.asarray(labels, np.uint8).reshape(-1, 1), np.asarray(images, np.uint8).reshape(len(labels), -1)],
        1,
    )
    Path(path).write_bytes(rec.tobytes())
