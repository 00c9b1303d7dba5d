"""torch custom ops backed by the Rust kernels (``torch.ops.bigmodel_native.*``).

Each module registers one op: its schema (with every mutated argument declared), the argument
checks torch users expect, a fake kernel for tracing, and autograd where the op is differentiable.
"""

from __future__ import annotations

from . import adam_cuda  # noqa: F401  (registers adam_step_'s CUDA kernel)
from .adam import adam_step_

__all__ = ["adam_step_"]
