"""Digits, the tutorials' random data and the character corpus."""

from __future__ import annotations

import math

import pytest
import torch
from bigmodel_native.data import build_corpus, load_digits, random_classification, random_regression
from bigmodel_native.data.text import stdlib_sources


def test_digits_shapes_and_split():
    (x, y), (xt, yt) = load_digits()
    assert x.shape[1:] == (1, 8, 8) and len(x) + len(xt) == 1797 and len(xt) == 359
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(y.tolist()) == set(range(10))
    (x28, _), _ = load_digits(side=28)
    assert x28.shape[1:] == (1, 28, 28)
    (x2, _), _ = load_digits()
    assert torch.equal(x, x2)  # fixed split under the default seed


def test_random_classification_is_seeded_and_standardised():
    x, y = random_classification(100, 10, 2, seed=3)
    x2, y2 = random_classification(100, 10, 2, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.mean(0).abs().max() < 1e-5 and (x.std(0) - 1).abs().max() < 1e-5
    assert set(y.tolist()) == {0, 1}
    assert not torch.equal(x, random_classification(100, 10, 2, seed=4)[0])


def test_random_regression_learnable():
    x, y = random_regression(1000, 10, seed=0)
    assert x.shape == (1000, 10) and y.shape == (1000,)
    w = torch.linalg.lstsq(x, y.unsqueeze(1)).solution
    resid = ((x @ w).squeeze(1) - y).pow(2).mean()
    assert resid < 0.7 * y.var()  # a linear fit already explains much of it


def test_corpus_split_and_roundtrip():
    text = "abcabcabd" * 20 + "zzzq"
    c = build_corpus(text, val_fraction=0.1)
    assert len(c.train) + len(c.val) == len(text)
    assert c.decode(c.train) == text[: len(c.train)]
    assert "q" not in c.chars  # only in the validation text: unknown
    assert c.decode(c.val).endswith("abd\x00\x00\x00\x00")  # z and q unseen in training
    x, y = c.windows("train", 8)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1:, 0], y[:-1, -1])
    base = c.unigram_loss()
    assert 0 < base < math.log(c.vocab_size) + 5
    with pytest.raises(ValueError, match="shorter than one window"):
        c.windows("val", 1000)


def test_stdlib_corpus_is_deterministic():
    a = stdlib_sources(50_000)
    assert len(a) == 50_000 and a == stdlib_sources(50_000)
    assert "def " in a
