"""IDX reader: valid files (gzip and raw) load; truncated or corrupt ones raise naming the file."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from bigmodel_native.data import IdxFormatError, load_mnist_format, read_idx
from bigmodel_native.data.idx import write_idx


def _mnist_dir(tmp_path, n=7, gz=True, rows=28, cols=28):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    sfx = ".gz" if gz else ""
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte{sfx}", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte{sfx}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_format_roundtrip(tmp_path, gz):
    images, labels = _mnist_dir(tmp_path, gz=gz)
    x, y = load_mnist_format(tmp_path, "train")
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images).unsqueeze(1).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    xt, _ = load_mnist_format(tmp_path, "test")
    assert xt.shape == x.shape


def test_read_idx_other_types(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    write_idx(tmp_path / "f.idx", a)
    assert np.array_equal(read_idx(tmp_path / "f.idx"), a)
    b = np.arange(-6, 6, dtype=np.int32).reshape(2, 2, 3)
    write_idx(tmp_path / "i.idx.gz", b)
    assert np.array_equal(read_idx(tmp_path / "i.idx.gz"), b)


def test_truncated_file_names_the_file(tmp_path):
    _mnist_dir(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(IdxFormatError, match=r"train-images-idx3-ubyte.*truncated"):
        load_mnist_format(tmp_path, "train")


def test_trailing_bytes_rejected(tmp_path):
    p = tmp_path / "x.idx"
    write_idx(p, np.zeros((2, 3), np.uint8))
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(IdxFormatError, match="trailing"):
        read_idx(p)


def test_bad_magic(tmp_path):
    p = tmp_path / "bad-idx1-ubyte"
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(IdxFormatError, match=r"bad-idx1-ubyte.*magic"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")  # unknown type code
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(p)


def test_too_short_and_truncated_header(tmp_path):
    p = tmp_path / "short"
    p.write_bytes(b"\x00\x00")
    with pytest.raises(IdxFormatError, match="too short"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    with pytest.raises(IdxFormatError, match="truncated header"):
        read_idx(p)


def test_wrong_dimensions(tmp_path):
    _mnist_dir(tmp_path, gz=True)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((7, 784), np.uint8))
    with pytest.raises(IdxFormatError, match=r"train-images-idx3-ubyte.gz.*2 dimensions, expected 3"):
        load_mnist_format(tmp_path, "train")


def test_label_count_mismatch_and_range(tmp_path):
    _mnist_dir(tmp_path, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(6, np.uint8))
    with pytest.raises(IdxFormatError, match="6 labels for 7 images"):
        load_mnist_format(tmp_path, "train")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(7, 10, np.uint8))
    with pytest.raises(IdxFormatError, match="out of range"):
        load_mnist_format(tmp_path, "train")


def test_corrupt_gzip_names_the_file(tmp_path):
    _mnist_dir(tmp_path, gz=True)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IdxFormatError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist_format(tmp_path, "test")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_format(tmp_path, "train")


def test_gzip_magic_detection_not_by_name(tmp_path):
    # A gzip file without .gz and a raw file are told apart by content.
    p = tmp_path / "train-labels-idx1-ubyte"
    raw = struct.pack(">HBBI", 0, 8, 1, 2) + b"\x01\x02"
    p.write_bytes(gzip.compress(raw))
    assert read_idx(p).tolist() == [1, 2]
