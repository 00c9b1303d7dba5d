"""torch custom ops backed by the Rust kernels (``torch.ops.bigmodel_native.*``).

Each module registers one op: its schema (with every mutated argument declared), the argument
checks torch users expect, a fake kernel for tracing, and autograd where the op is differentiable.
"""

from __future__ import annotations

from . import (
    adam_cuda,  # noqa: F401  (registers adam_step_'s CUDA kernel)
    attention_cuda,  # noqa: F401  (registers the attention ops' CUDA kernels)
    conv2d_cuda,  # noqa: F401  (registers the conv2d ops' CUDA kernels)
    cross_entropy_cuda,  # noqa: F401  (registers the cross-entropy ops' CUDA kernels)
)
from .adam import adam_step_
from .attention import scaled_dot_product_attention
from .conv2d import conv2d, conv2d_relu, conv2d_relu_max_pool2d
from .cross_entropy import cross_entropy, cross_entropy_inplace_backward
from .max_pool2d import max_pool2d

__all__ = [
    "adam_step_",
    "conv2d",
    "conv2d_relu",
    "conv2d_relu_max_pool2d",
    "cross_entropy",
    "cross_entropy_inplace_backward",
    "max_pool2d",
    "scaled_dot_product_attention",
]
