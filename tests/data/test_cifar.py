"""CIFAR-10 binary reader on small files written in the format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bigmodel_native.data import CifarFormatError, load_cifar10, read_cifar_batch
from bigmodel_native.data.cifar import write_cifar_batch


def _write_set(d, n=4):
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        imgs = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_cifar_batch(d / name, imgs, labels)
        batches[name] = (imgs, labels)
    return batches


def test_load_cifar10(tmp_path):
    b = _write_set(tmp_path)
    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
    assert torch.equal(x[:4], torch.from_numpy(b["data_batch_1.bin"][0]).float() / 255)
    assert y[4:8].tolist() == b["data_batch_2.bin"][1].tolist()
    xt, yt = load_cifar10(tmp_path, "test")
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == b["test_batch.bin"][1].tolist()


def test_subfolder(tmp_path):
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    _write_set(sub, n=2)
    assert load_cifar10(tmp_path, "test")[0].shape == (2, 3, 32, 32)


def test_channel_planes(tmp_path):
    img = np.zeros((1, 3, 32, 32), np.uint8)
    img[0, 0] = 255  # red plane first in each record
    write_cifar_batch(tmp_path / "one.bin", img, np.array([3]))
    raw = (tmp_path / "one.bin").read_bytes()
    assert raw[0] == 3 and raw[1] == 255 and raw[1 + 1024] == 0
    x, y = read_cifar_batch(tmp_path / "one.bin")
    assert x[0, 0].min() == 255 and x[0, 1].max() == 0 and y.tolist() == [3]


def test_truncated_batch_names_the_file(tmp_path):
    _write_set(tmp_path)
    p = tmp_path / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(CifarFormatError, match=r"data_batch_3.bin.*truncated"):
        load_cifar10(tmp_path, "train")


def test_bad_label(tmp_path):
    _write_set(tmp_path)
    p = tmp_path / "test_batch.bin"
    blob = bytearray(p.read_bytes())
    blob[3073] = 200  # label byte of record 1
    p.write_bytes(bytes(blob))
    with pytest.raises(CifarFormatError, match=r"test_batch.bin: record 1 has label 200"):
        load_cifar10(tmp_path, "test")


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(tmp_path, "train")


def test_pickle_version_is_not_read(tmp_path):
    # The Python version's files (data_batch_1 without .bin) are pickles: they are never opened.
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(FileNotFoundError):
        load_cifar10(tmp_path, "train")
