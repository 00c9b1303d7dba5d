"""A character-level corpus built from the Python standard library's own sources.

Every machine that runs this package has them. The corpus is the top-level ``*.py`` files of the
standard library in sorted name order, concatenated up to ``max_chars``; the first
``1 - val_fraction`` of it is the training text and the rest the validation text (a fixed split,
never shuffled, so no validation text leaks into training windows).
"""

from __future__ import annotations

import math
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

UNK = "\x00"


@dataclass
class CharCorpus:
    """Encoded train/validation text and the vocabulary (index 0 is the unknown character)."""

    chars: list[str]
    train: torch.Tensor
    val: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([index.get(c, 0) for c in text], dtype=torch.int64)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def windows(self, split: str, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping (input, next-character target) windows of length ``context``."""
        ids = self.train if split == "train" else self.val
        n = (len(ids) - 1) // context
        if n == 0:
            raise ValueError(
                f"the {split} text ({len(ids)} characters) is shorter than one window of {context}"
            )
        x = ids[: n * context].view(n, context)
        y = ids[1 : n * context + 1].view(n, context)
        return x, y

    def unigram_loss(self) -> float:
        """Cross-entropy (nats/char) on the validation text of the training text's character frequencies.

        The baseline a language model has to beat (add-one smoothing so no probability is zero).
        """
        counts = torch.bincount(self.train, minlength=self.vocab_size).double() + 1.0
        logp = (counts / counts.sum()).log()
        return float(-logp[self.val].mean())


def stdlib_sources(max_chars: int) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    text = "".join(parts)[:max_chars]
    if not text:
        raise FileNotFoundError(f"no Python sources found under {root}")
    return text


def build_corpus(text: str, val_fraction: float = 0.1) -> CharCorpus:
    """Splits ``text`` (train first, validation last) and builds the vocabulary from the train part."""
    cut = int(len(text) * (1 - val_fraction))
    train_text, val_text = text[:cut], text[cut:]
    freq = Counter(train_text)
    chars = [UNK] + sorted(c for c in freq if c != UNK)
    corpus = CharCorpus(chars, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64))
    corpus.train = corpus.encode(train_text)
    corpus.val = corpus.encode(val_text)
    return corpus


def load_stdlib_corpus(max_chars: int = 2_000_000, val_fraction: float = 0.1) -> CharCorpus:
    """The standard-library corpus (see the module doc)."""
    return build_corpus(stdlib_sources(max_chars), val_fraction)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf
