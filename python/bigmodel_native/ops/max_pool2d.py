"""``bigmodel_native::max_pool2d``: 2-D max pooling with indices in Rust, forward and backward.

:func:`max_pool2d` has ``torch.nn.functional.max_pool2d``'s signature and semantics: batched
(N, C, H, W) or unbatched (C, H, W) input; ``kernel_size``, ``stride`` (default: the kernel),
``padding`` (implicit -inf), ``dilation``, ``ceil_mode`` and ``return_indices`` (flat ``y * W + x``
positions within each plane, as torch reports them); NaN in a window wins, as in torch; float32,
float64, bfloat16 and float16. The output is NCHW-contiguous whatever the input's layout.

Why an op of its own: torch's CPU ``max_pool2d`` on NCHW tensors walks each window with scalar
code and costs as much as the convolution before it in the seed CNNs (about 5 ms for
64x32x26x26 on 2 cores); the fused Rust loop takes a fraction of that (``bigmodel-native bench
pool``). Two ops back it, defined with ``torch.library.Library`` like conv2d: ``max_pool2d``
(4-D input) returning the output and the indices, and ``max_pool2d_backward`` scattering the
gradient through the indices. The backward is once-differentiable: differentiating it again
raises a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch._C import _functions

from .. import _native
from .._threads import get_num_threads
from ._eager import eager_function, mark_auxiliary_outputs, skips_dispatcher
from ._library import LIB

_DOUBLE_BACKWARD = (
    b"bigmodel_native.max_pool2d has no double backward: trying to differentiate twice through its "
    b"gradient (use torch.nn.functional.max_pool2d where second derivatives are needed)"
)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

LIB.define(
    "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
    "bool ceil_mode) -> (Tensor, Tensor)"
)
LIB.define(
    "max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, "
    "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor"
)


def _ints(value: int | Sequence[int]) -> list[int]:
    return [value] if isinstance(value, int) else [int(v) for v in value]


def _options(kernel_size, stride, padding, dilation) -> tuple[list[int], ...]:
    """torch's argument-count checks, in its order; each option as a pair."""
    k = _ints(kernel_size)
    if len(k) not in (1, 2):
        raise RuntimeError("max_pool2d: kernel_size must either be a single int, or a tuple of two ints")
    s = [] if stride is None else _ints(stride)
    if len(s) not in (0, 1, 2):
        raise RuntimeError("max_pool2d: stride must either be omitted, a single int, or a tuple of two ints")
    p = _ints(padding)
    if len(p) not in (1, 2):
        raise RuntimeError("max_pool2d: padding must either be a single int, or a tuple of two ints")
    d = _ints(dilation)
    if len(d) not in (1, 2):
        raise RuntimeError("max_pool2d: dilation must be either a single int, or a tuple of two ints")
    k2 = k * 2 if len(k) == 1 else k
    s2 = k2 if not s else (s * 2 if len(s) == 1 else s)
    return k2, s2, p * 2 if len(p) == 1 else p, d * 2 if len(d) == 1 else d


def _out_size(size: int, k: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    """torch's ``pooling_output_shape`` with its checks."""
    if stride == 0:
        raise RuntimeError("stride should not be zero")
    if pad < 0:
        raise RuntimeError(f"pad must be non-negative, but got pad: {pad}")
    if pad > ((k - 1) * dilation + 1) // 2:
        raise RuntimeError(
            f"pad should be at most half of effective kernel size, but got pad={pad}, kernel_size={k} "
            f"and dilation={dilation}"
        )
    out = (size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check(input: Tensor, k, s, p, d, ceil_mode: bool) -> tuple[int, int]:
    """The output's (OH, OW) for a 4-D input, after torch's shape checks and messages."""
    if input.dim() != 4:
        raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
    oh = _out_size(input.shape[2], k[0], p[0], s[0], d[0], ceil_mode)
    ow = _out_size(input.shape[3], k[1], p[1], s[1], d[1], ceil_mode)
    if k[0] <= 0 or k[1] <= 0:
        raise RuntimeError(f"kernel size should be greater than zero, but got kH: {k[0]} kW: {k[1]}")
    if s[0] <= 0 or s[1] <= 0:
        raise RuntimeError(f"stride should be greater than zero, but got dH: {s[0]} dW: {s[1]}")
    if d[0] <= 0 or d[1] <= 0:
        raise RuntimeError(
            f"dilation should be greater than zero, but got dilationH: {d[0]} dilationW: {d[1]}"
        )
    if 0 in input.shape[1:]:
        raise RuntimeError(
            "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:"
            f"{list(input.shape)}"
        )
    if oh < 1 or ow < 1:
        c, h, w = input.shape[1:]
        raise RuntimeError(
            f"Given input size: ({c}x{h}x{w}). Calculated output size: ({c}x{oh}x{ow}). "
            "Output size is too small"
        )
    if input.dtype not in _DTYPES:
        raise NotImplementedError(
            f"bigmodel_native.ops.max_pool2d: unsupported dtype {input.dtype}; the kernel takes "
            "float32, float64, bfloat16 and float16 (use torch.nn.functional.max_pool2d for others)"
        )
    if input.device.type != "cpu":
        raise NotImplementedError(
            f"bigmodel_native.ops.max_pool2d: input is on {input.device}; the kernel runs on CPU tensors"
        )
    return oh, ow


def _kwargs(input: Tensor, k, s, p, d, out_hw) -> dict:
    return dict(
        planes=input.shape[0] * input.shape[1],
        hw=(input.shape[2], input.shape[3]),
        kernel=tuple(k),
        stride=tuple(s),
        padding=tuple(p),
        dilation=tuple(d),
        out_hw=out_hw,
        num_threads=get_num_threads(),
    )


def _max_pool2d_cpu(input, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[Tensor, Tensor]:
    out_hw = _check(input, kernel_size, stride, padding, dilation, ceil_mode)
    input = input.contiguous()
    shape = (input.shape[0], input.shape[1], *out_hw)
    out = torch.empty(shape, dtype=input.dtype)
    indices = torch.empty(shape, dtype=torch.int64)
    _native.max_pool2d_forward(
        input, out, indices, **_kwargs(input, kernel_size, stride, padding, dilation, out_hw)
    )
    return out, indices


def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[Tensor, Tensor]:
    out_hw = _check(input, kernel_size, stride, padding, dilation, ceil_mode)
    shape = (input.shape[0], input.shape[1], *out_hw)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


def _max_pool2d_backward_cpu(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    out_hw = _check(input, kernel_size, stride, padding, dilation, ceil_mode)
    want = (input.shape[0], input.shape[1], *out_hw)
    if tuple(grad_output.shape) != want or tuple(indices.shape) != want or grad_output.dtype != input.dtype:
        raise RuntimeError(
            f"max_pool2d_backward: grad_output {list(grad_output.shape)} ({grad_output.dtype}) and indices "
            f"{list(indices.shape)}, expected {list(want)} ({input.dtype})"
        )
    if indices.dtype != torch.int64:
        raise RuntimeError(f"max_pool2d_backward: indices must be int64, got {indices.dtype}")
    grad_input = torch.empty(input.shape, dtype=input.dtype)
    _native.max_pool2d_backward(
        grad_output.contiguous(), indices.contiguous(), grad_input,
        **_kwargs(input, kernel_size, stride, padding, dilation, out_hw),
    )  # fmt: skip
    return grad_input


def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    _check(input, kernel_size, stride, padding, dilation, ceil_mode)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    input, *conf = inputs
    ctx.save_for_backward(input, output[1])
    mark_auxiliary_outputs(ctx, output[1])
    ctx.conf = conf


def _backward(ctx, grad: Tensor | None, _grad_indices: Tensor | None):
    if grad is None:  # nothing flows back
        return (None,) * 6
    input, indices = ctx.saved_tensors
    # In plain eager mode on CPU, the kernel directly (see `skips_dispatcher`).
    direct = input.device.type == "cpu" and skips_dispatcher(grad, input, indices)
    fn = _max_pool2d_backward_cpu if direct else torch.ops.bigmodel_native.max_pool2d_backward
    with torch.no_grad():
        grad_input = fn(grad, input, indices, *ctx.conf)
    if torch.is_grad_enabled() and grad.requires_grad:
        # create_graph=True: give the gradient a node that raises if it is differentiated again.
        grad_input = _functions.DelayedError(_DOUBLE_BACKWARD, 1)(grad_input.detach().requires_grad_())
    return grad_input, None, None, None, None, None


LIB.impl("max_pool2d", _max_pool2d_cpu, "CPU")
LIB.impl("max_pool2d_backward", _max_pool2d_backward_cpu, "CPU")
torch.library.register_fake("bigmodel_native::max_pool2d", _max_pool2d_fake, lib=LIB)
torch.library.register_fake("bigmodel_native::max_pool2d_backward", _max_pool2d_backward_fake, lib=LIB)
torch.library.register_autograd(
    "bigmodel_native::max_pool2d", _backward, setup_context=_setup_context, lib=LIB
)


_MaxPool2d = eager_function("_MaxPool2d", _max_pool2d_cpu, _setup_context, _backward)


def _call(input: Tensor, *conf: object) -> tuple[Tensor, Tensor]:
    if input.device.type == "cpu" and skips_dispatcher(input):
        if torch.is_grad_enabled() and input.requires_grad:
            return _MaxPool2d.apply(input, *conf)
        return _max_pool2d_cpu(input, *conf)
    return torch.ops.bigmodel_native.max_pool2d(input, *conf)


def max_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Drop-in for ``torch.nn.functional.max_pool2d`` running bigmodel_native's CPU kernel."""
    k, s, p, d = _options(kernel_size, stride, padding, dilation)
    if input.device.type != "cpu":
        raise NotImplementedError(
            f"bigmodel_native.ops.max_pool2d runs on CPU tensors, got one on {input.device}; use "
            "torch.nn.functional.max_pool2d there (bigmodel_native.nn.MaxPool2d does so by itself)"
        )
    if input.dim() not in (3, 4):
        raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
    if input.dim() == 3 and 0 in input.shape:
        raise RuntimeError(
            "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:"
            f"{list(input.shape)}"
        )
    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    out, indices = _call(x, k, s, p, d, bool(ceil_mode))
    if not batched:
        out, indices = out.squeeze(0), indices.squeeze(0)
    return (out, indices) if return_indices else out
