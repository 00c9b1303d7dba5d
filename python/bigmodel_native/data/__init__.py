"""Data for the seed systems: IDX (MNIST, Fashion-MNIST), CIFAR-10 binary, digits, random data, text."""

from __future__ import annotations

from .cifar import CIFAR10_CLASSES, CifarFormatError, load_cifar10, read_cifar_batch
from .digits import load_digits
from .idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IdxFormatError,
    fashion_mnist_available,
    load_mnist_format,
    read_idx,
)
from .synthetic import random_classification, random_regression, train_test_split
from .text import CharCorpus, build_corpus, load_stdlib_corpus

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "CharCorpus",
    "CifarFormatError",
    "IdxFormatError",
    "build_corpus",
    "fashion_mnist_available",
    "load_cifar10",
    "load_digits",
    "load_mnist_format",
    "load_stdlib_corpus",
    "random_classification",
    "random_regression",
    "read_cifar_batch",
    "read_idx",
    "train_test_split",
]
