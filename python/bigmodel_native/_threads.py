"""How many threads the Rust kernels use.

The kernels run on their own rayon pool. By default its size follows ``torch.get_num_threads()``
at every call, so ``torch.set_num_threads`` governs both libraries; ``set_num_threads`` here pins
ours independently. The pool itself is rebuilt in a forked child (see crates/.../pool.rs).
"""

from __future__ import annotations

import torch

_pinned: int | None = None


def set_num_threads(n: int | None) -> None:
    """Pins the kernels' thread count to ``n``; ``None`` makes it follow torch again."""
    global _pinned
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"set_num_threads expects an int or None, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"Number of threads must be positive, got {n}")
    _pinned = n


def get_num_threads() -> int:
    """The thread count the next kernel call will use."""
    return _pinned if _pinned is not None else torch.get_num_threads()
