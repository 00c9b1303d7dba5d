"""IDX files (MNIST, Fashion-MNIST), gzip-compressed or raw.

Format: a 4-byte magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 dimensions,
then the values in row-major order. MNIST-format sets use type 0x08 (uint8): images are
``idx3`` (count, rows, cols) and labels ``idx1`` (count). Every check names the file it failed on.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

#: IDX type byte -> numpy big-endian dtype.
_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class IdxFormatError(ValueError):
    """An IDX file is truncated, corrupt or not what was expected; the message names the file."""


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                return g.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IdxFormatError(f"{path}: cannot decompress ({exc})") from exc


def read_idx(path: str | os.PathLike[str], expect_ndim: int | None = None) -> np.ndarray:
    """Reads one IDX file (gzip or raw) into a numpy array, checking magic, dims and length."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _TYPES:
        raise IdxFormatError(f"{path}: bad IDX magic number 0x{data[:4].hex()}")
    if ndim == 0 or (expect_ndim is not None and ndim != expect_ndim):
        want = "" if expect_ndim is None else f", expected {expect_ndim}"
        raise IdxFormatError(f"{path}: IDX file has {ndim} dimensions{want}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _TYPES[type_code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have != need:
        what = "truncated" if have < need else "has trailing bytes"
        raise IdxFormatError(f"{path}: {what}: dimensions {tuple(dims)} need {need} data bytes, found {have}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> None:
    """Writes ``array`` as IDX (gzip when ``compress`` or the name ends in .gz); used by the tests."""
    path = Path(path)
    arr = np.asarray(array)
    codes = {v.newbyteorder("="): k for k, v in _TYPES.items()}
    code = codes[arr.dtype.newbyteorder("=")]
    blob = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob += arr.astype(_TYPES[code]).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"{directory}: no {stem}[.gz] (an MNIST-format directory holds the four IDX files)"
    )


def load_mnist_format(
    directory: str | os.PathLike[str], split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads ``train`` or ``test`` of an MNIST-format directory.

    Returns images as float32 (N, 1, rows, cols) scaled to [0, 1] and labels as int64 (N,).
    """
    directory = Path(directory)
    prefix = {"train": "train", "test": "t10k"}[split]
    img_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(img_path, expect_ndim=3)
    labels = read_idx(lbl_path, expect_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise IdxFormatError(f"{img_path}: MNIST-format files hold unsigned bytes")
    if len(images) != len(labels):
        raise IdxFormatError(f"{lbl_path}: {len(labels)} labels for {len(images)} images in {img_path}")
    if labels.size and labels.max() > 9:
        raise IdxFormatError(f"{lbl_path}: label {int(labels.max())} out of range 0-9")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def fashion_mnist_available(directory: str | os.PathLike[str] = FASHION_MNIST_DIR) -> bool:
    d = Path(directory)
    return all(
        (d / f"{s}.gz").is_file() or (d / s).is_file()
        for s in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )
