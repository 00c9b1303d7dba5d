"""``bigmodel_native::conv2d``: 2-D convolution by im2col + GEMM in Rust, forward and backward.

:func:`conv2d` has ``torch.nn.functional.conv2d``'s signature and semantics: batched (N, C, H, W)
or unbatched (C, H, W) input; ``stride``, ``padding`` (int, pair, ``"valid"`` or ``"same"``,
which pads the far side one more than the near side for even kernels, as torch does),
``dilation`` and ``groups`` (depthwise included); optional bias; float32, float64, bfloat16 and
float16 (the last two computed in float32).

Two ops back it, both defined with ``torch.library.Library`` (cheaper per call than
``custom_op``'s wrappers): ``conv2d`` (4-D input, padding resolved to [top, bottom, left, right])
and ``conv2d_backward`` (the three gradients, each only when asked for). Autograd is registered
on ``conv2d``; its backward is once-differentiable: differentiating its gradients again raises a clear error.

:func:`conv2d_relu` is ``relu(conv2d(...))`` in one kernel call (CPU): the ReLU is applied while
each output row is still in cache, and its backward masks the gradient on the way into the
products, so neither direction makes a separate pass over the activation. Its ops are
``conv2d_relu`` and ``conv2d_relu_backward`` (which takes the forward's output for the mask).
:func:`conv2d_relu_max_pool2d` adds a 2x2 max pooling in the same call: its op
``conv2d_relu_max_pool2d`` returns the pooled output and the indices that route its gradient (a
window maximum's flat position in the convolution's output plane, or -1 where the ReLU stops the
gradient), which ``conv2d_relu_max_pool2d_backward`` takes.
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

_NAME = "bigmodel_native::conv2d"
_DOUBLE_BACKWARD = (
    b"bigmodel_native.conv2d has no double backward: trying to differentiate twice through its "
    b"gradients (use torch.nn.functional.conv2d where second derivatives are needed)"
)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

LIB.define(
    "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, "
    "int groups) -> Tensor"
)
LIB.define(
    "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[4] padding, "
    "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
)
LIB.define(
    "conv2d_relu(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
    "int[2] dilation, int groups) -> Tensor"
)
LIB.define(
    "conv2d_relu_backward(Tensor grad_output, Tensor output, Tensor input, Tensor weight, int[2] stride, "
    "int[4] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
)
LIB.define(
    "conv2d_relu_max_pool2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
    "int[2] dilation, int groups) -> (Tensor, Tensor)"
)
LIB.define(
    "conv2d_relu_max_pool2d_backward(Tensor grad_output, Tensor indices, Tensor input, Tensor weight, "
    "int[2] stride, int[4] padding, int[2] dilation, int groups, bool[3] output_mask) "
    "-> (Tensor, Tensor, Tensor)"
)


def _pair(name: str, value: int | Sequence[int]) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    vals = list(value)
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={vals}"
        )
    return [int(v) for v in vals]


def _resolve_padding(
    padding: str | int | Sequence[int], weight: Tensor, stride: list[int], dilation: list[int]
) -> list[int]:
    """[top, bottom, left, right] for torch's padding argument."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding != "same":
            raise RuntimeError(f"Invalid padding string: '{padding}'")
        if any(s != 1 for s in stride):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        out = []
        for d, k in zip(dilation, weight.shape[2:], strict=True):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return out
    ph, pw = _pair("padding", padding)
    return [ph, ph, pw, pw]


def _out_hw(input: Tensor, weight: Tensor, stride, padding, dilation) -> tuple[int, int]:
    h = input.shape[2] + padding[0] + padding[1]
    w = input.shape[3] + padding[2] + padding[3]
    kh = dilation[0] * (weight.shape[2] - 1) + 1
    kw = dilation[1] * (weight.shape[3] - 1) + 1
    if h < kh or w < kw:
        raise RuntimeError(
            f"Calculated padded input size per channel: ({h} x {w}). Kernel size: ({kh} x {kw}). "
            "Kernel size can't be greater than actual input size"
        )
    return (h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1


def _check(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> tuple[int, int]:
    """torch's checks of a 4-D convolution, with its messages; returns the output's (H, W)."""
    if input.dim() != 4:
        raise RuntimeError(f"{_NAME}: expected 4-D input, got input of size: {list(input.shape)}")
    if weight.dim() != 4:
        raise RuntimeError(f"{_NAME}: expected 4-D weight, got weight of size: {list(weight.shape)}")
    if len(stride) != 2 or len(dilation) != 2 or len(padding) != 4:
        raise RuntimeError(f"{_NAME}: expected 2 strides, 2 dilations and 4 paddings")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError("non-positive dilation is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    for t, what in ((input, "input"), (weight, "weight"), (bias, "bias")):
        if t is not None and t.dtype not in _DTYPES:
            raise TypeError(
                f"{_NAME}: unsupported dtype {t.dtype} for {what}; expected torch.float32, "
                "torch.float64, torch.bfloat16 or torch.float16"
            )
    if input.dtype != weight.dtype:
        raise RuntimeError(f"Input type ({input.dtype}) and weight type ({weight.dtype}) should be the same")
    if bias is not None and bias.dtype != input.dtype:
        raise RuntimeError(f"Input type ({input.dtype}) and bias type ({bias.dtype}) should be the same")
    if weight.shape[0] < 1:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be at least 1 at dimension 0, but got weight "
            f"of size {list(weight.shape)} instead"
        )
    if weight.shape[0] % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, but "
            f"got weight of size [{list(weight.shape)}] instead"
        )
    if input.shape[1] != weight.shape[1] * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
            f"{list(input.shape)} to have {weight.shape[1] * groups} channels, but got "
            f"{input.shape[1]} channels instead"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise RuntimeError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
            f"{weight.shape[0]} elements, but got bias of size {list(bias.shape)} instead"
        )
    return _out_hw(input, weight, stride, padding, dilation)


def _kwargs(input: Tensor, weight: Tensor, stride, padding, dilation, groups, out_hw) -> dict:
    return dict(
        input_shape=tuple(input.shape),
        weight_shape=(weight.shape[0], weight.shape[2], weight.shape[3]),
        groups=groups,
        stride=tuple(stride),
        padding=(padding[0], padding[2]),
        dilation=tuple(dilation),
        out_hw=out_hw,
        num_threads=get_num_threads(),
    )


def _conv2d_cpu(input, weight, bias, stride, padding, dilation, groups, relu: bool = False) -> Tensor:
    out_hw = _check(input, weight, bias, stride, padding, dilation, groups)
    input, weight = input.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = torch.empty((input.shape[0], weight.shape[0], *out_hw), dtype=input.dtype)
    _native.conv2d_forward(
        input, weight, bias, out, relu=relu,
        **_kwargs(input, weight, stride, padding, dilation, groups, out_hw),
    )  # fmt: skip
    return out


def _conv2d_relu_cpu(input, weight, bias, stride, padding, dilation, groups) -> Tensor:
    return _conv2d_cpu(input, weight, bias, stride, padding, dilation, groups, relu=True)


def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups) -> Tensor:
    out_hw = _check(input, weight, bias, stride, padding, dilation, groups)
    return input.new_empty((input.shape[0], weight.shape[0], *out_hw))


def _pooled_shape(input: Tensor, weight: Tensor, out_hw) -> tuple[int, int, int, int]:
    """The shape of max_pool2d(conv output, 2): 2x2 windows, stride 2, floor."""
    return (input.shape[0], weight.shape[0], out_hw[0] // 2, out_hw[1] // 2)


def _check_poolable(input: Tensor, weight: Tensor, out_hw) -> None:
    """torch's max_pool2d error for a convolution output smaller than one 2x2 window."""
    if out_hw[0] < 2 or out_hw[1] < 2:
        c, (h, w) = weight.shape[0], out_hw
        raise RuntimeError(
            f"Given input size: ({c}x{h}x{w}). Calculated output size: ({c}x{h // 2}x{w // 2}). "
            "Output size is too small"
        )


def _conv2d_relu_pool_cpu(input, weight, bias, stride, padding, dilation, groups) -> tuple[Tensor, Tensor]:
    out_hw = _check(input, weight, bias, stride, padding, dilation, groups)
    _check_poolable(input, weight, out_hw)
    input, weight = input.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    shape = _pooled_shape(input, weight, out_hw)
    out = torch.empty(shape, dtype=input.dtype)
    indices = torch.empty(shape, dtype=torch.int64)
    _native.conv2d_forward(
        input, weight, bias, out, relu=True, pool_indices=indices,
        **_kwargs(input, weight, stride, padding, dilation, groups, out_hw),
    )  # fmt: skip
    return out, indices


def _conv2d_relu_pool_fake(input, weight, bias, stride, padding, dilation, groups) -> tuple[Tensor, Tensor]:
    out_hw = _check(input, weight, bias, stride, padding, dilation, groups)
    _check_poolable(input, weight, out_hw)
    shape = _pooled_shape(input, weight, out_hw)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


def _conv2d_backward_cpu(
    grad_output, input, weight, stride, padding, dilation, groups, output_mask, relu_output=None, indices=None
):
    out_hw = _check(input, weight, None, stride, padding, dilation, groups)
    want = (input.shape[0], weight.shape[0], *out_hw)
    if indices is not None:  # the gradient of the pooled output
        want = _pooled_shape(input, weight, out_hw)
        if tuple(indices.shape) != want or indices.dtype != torch.int64:
            raise RuntimeError(
                f"{_NAME}_backward: indices of size {list(indices.shape)} and dtype {indices.dtype}, "
                f"expected size {list(want)} and dtype torch.int64"
            )
    for name, t in (("grad_output", grad_output), ("output", relu_output)):
        if t is not None and (tuple(t.shape) != want or t.dtype != input.dtype):
            raise RuntimeError(
                f"{_NAME}_backward: {name} of size {list(t.shape)} and dtype "
                f"{t.dtype}, expected size {list(want)} and dtype {input.dtype}"
            )
    grad_output, input, weight = grad_output.contiguous(), input.contiguous(), weight.contiguous()
    gi = torch.empty_like(input) if output_mask[0] else None
    gw = torch.empty_like(weight) if output_mask[1] else None
    gb = weight.new_empty(weight.shape[0]) if output_mask[2] else None
    _native.conv2d_backward(
        grad_output, input, weight, gi, gw, gb,
        relu_output=None if relu_output is None else relu_output.contiguous(),
        pool_indices=None if indices is None else indices.contiguous(),
        **_kwargs(input, weight, stride, padding, dilation, groups, out_hw),
    )  # fmt: skip
    empty = input.new_empty(0)
    return (
        empty if gi is None else gi,
        empty.clone() if gw is None else gw,
        empty.clone() if gb is None else gb,
    )


def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    _check(input, weight, None, stride, padding, dilation, groups)
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format)
        if output_mask[0]
        else input.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format)
        if output_mask[1]
        else input.new_empty(0),
        weight.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0),
    )


def _conv2d_relu_backward_cpu(
    grad_output, output, input, weight, stride, padding, dilation, groups, output_mask
):
    return _conv2d_backward_cpu(
        grad_output, input, weight, stride, padding, dilation, groups, output_mask, output
    )


def _conv2d_relu_backward_fake(
    grad_output, output, input, weight, stride, padding, dilation, groups, output_mask
):
    return _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask)


def _conv2d_relu_pool_backward_cpu(
    grad_output, indices, input, weight, stride, padding, dilation, groups, output_mask
):
    return _conv2d_backward_cpu(
        grad_output, input, weight, stride, padding, dilation, groups, output_mask, indices=indices
    )


def _conv2d_relu_pool_backward_fake(
    grad_output, indices, input, weight, stride, padding, dilation, groups, output_mask
):
    return _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask)


def _setup_context(ctx, inputs, output, relu: bool = False) -> None:
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.pooled = isinstance(output, tuple)
    if ctx.pooled:  # the indices (with the ReLU's cuts) route the gradient
        mark_auxiliary_outputs(ctx, output[1])
        ctx.save_for_backward(input, weight, output[1])
    elif relu:  # the output of a fused ReLU is its mask for the backward
        ctx.save_for_backward(input, weight, output)
    else:
        ctx.save_for_backward(input, weight)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _setup_relu_context(ctx, inputs, output) -> None:
    _setup_context(ctx, inputs, output, relu=True)


def _backward(ctx, grad: Tensor | None, *_grad_indices: Tensor | None):
    if grad is None:  # (grads are not materialized for a pooled forward) nothing flows back
        return (None,) * 7
    input, weight, *outputs = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[2])]
    ops = torch.ops.bigmodel_native
    # In plain eager mode on CPU, the kernels directly (the dispatcher would route there anyway,
    # at tens of microseconds per trip); the registered ops elsewhere.
    direct = input.device.type == "cpu" and skips_dispatcher(grad, input, weight, *outputs)
    with torch.no_grad():
        if ctx.pooled:  # outputs: the pooled forward's indices
            fn = _conv2d_relu_pool_backward_cpu if direct else ops.conv2d_relu_max_pool2d_backward
            grads = fn(grad, outputs[0], input, weight, *ctx.conf, mask)
        elif outputs:
            fn = _conv2d_relu_backward_cpu if direct else ops.conv2d_relu_backward
            grads = fn(grad, outputs[0], input, weight, *ctx.conf, mask)
        else:
            fn = _conv2d_backward_cpu if direct else ops.conv2d_backward
            grads = fn(grad, input, weight, *ctx.conf, mask)
    outs = [g if m else None for g, m in zip(grads, mask, strict=True)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (grad, input, weight)):
        # create_graph=True: the gradients get a node that raises if anything differentiates
        # through them (what @once_differentiable does, but it only looks at grad_output).
        err = _functions.DelayedError(_DOUBLE_BACKWARD, len(outs))
        outs = list(err(*[None if g is None else g.detach().requires_grad_() for g in outs]))
    return (*outs, None, None, None, None)


LIB.impl("conv2d", _conv2d_cpu, "CPU")
LIB.impl("conv2d_backward", _conv2d_backward_cpu, "CPU")
torch.library.register_fake("bigmodel_native::conv2d", _conv2d_fake, lib=LIB)
torch.library.register_fake("bigmodel_native::conv2d_backward", _conv2d_backward_fake, lib=LIB)
torch.library.register_autograd("bigmodel_native::conv2d", _backward, setup_context=_setup_context, lib=LIB)
LIB.impl("conv2d_relu", _conv2d_relu_cpu, "CPU")
LIB.impl("conv2d_relu_backward", _conv2d_relu_backward_cpu, "CPU")
torch.library.register_fake("bigmodel_native::conv2d_relu", _conv2d_fake, lib=LIB)
torch.library.register_fake("bigmodel_native::conv2d_relu_backward", _conv2d_relu_backward_fake, lib=LIB)
torch.library.register_autograd(
    "bigmodel_native::conv2d_relu", _backward, setup_context=_setup_relu_context, lib=LIB
)
LIB.impl("conv2d_relu_max_pool2d", _conv2d_relu_pool_cpu, "CPU")
LIB.impl("conv2d_relu_max_pool2d_backward", _conv2d_relu_pool_backward_cpu, "CPU")
torch.library.register_fake("bigmodel_native::conv2d_relu_max_pool2d", _conv2d_relu_pool_fake, lib=LIB)
torch.library.register_fake(
    "bigmodel_native::conv2d_relu_max_pool2d_backward", _conv2d_relu_pool_backward_fake, lib=LIB
)
torch.library.register_autograd(
    "bigmodel_native::conv2d_relu_max_pool2d", _backward, setup_context=_setup_context, lib=LIB
)


_Conv2d = eager_function("_Conv2d", _conv2d_cpu, _setup_context, _backward)
_Conv2dReLU = eager_function("_Conv2dReLU", _conv2d_relu_cpu, _setup_relu_context, _backward)
_Conv2dReLUPool = eager_function("_Conv2dReLUPool", _conv2d_relu_pool_cpu, _setup_context, _backward)


#: epilogue -> (eager autograd Function, CPU kernel, registered op name)
_EPILOGUES = {
    "": (_Conv2d, _conv2d_cpu, "conv2d"),
    "relu": (_Conv2dReLU, _conv2d_relu_cpu, "conv2d_relu"),
    "relu_pool": (_Conv2dReLUPool, _conv2d_relu_pool_cpu, "conv2d_relu_max_pool2d"),
}


def _call(input: Tensor, weight: Tensor, bias: Tensor | None, *conf: object, epilogue: str = "") -> Tensor:
    function, kernel, op = _EPILOGUES[epilogue]
    if input.device.type == "cpu" and skips_dispatcher(input, weight, bias):
        tensors = (input, weight) if bias is None else (input, weight, bias)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            out = function.apply(input, weight, bias, *conf)
        else:
            out = kernel(input, weight, bias, *conf)
    else:
        out = getattr(torch.ops.bigmodel_native, op)(input, weight, bias, *conf)
    return out[0] if epilogue == "relu_pool" else out


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.conv2d`` running bigmodel_native's kernels (CPU, or CUDA for
    float32 / bfloat16 / float16 CUDA tensors: see ``conv2d_cuda.py``)."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, "")


def conv2d_relu(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """``torch.relu(torch.nn.functional.conv2d(...))`` in one kernel call, forward and backward:
    the same values and gradients, bit for bit, as :func:`conv2d` followed by ``torch.relu``,
    without the activation's two extra passes over memory. CPU tensors only (on CUDA, compose
    :func:`conv2d` with ``torch.relu``)."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, "relu")


def conv2d_relu_max_pool2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """``F.max_pool2d(torch.relu(F.conv2d(...)), 2)`` in one kernel call, forward and backward.

    Each image's convolution output is activated and pooled (2x2 windows, stride 2, floor) while
    still in cache, so the full-size activation is never written, kept for the backward or read
    again: the backward keeps only the pooling's indices (-1 where the window's maximum is <= 0,
    so the ReLU stops its gradient) and sends each pooled gradient straight to its window's
    maximum; the last row and column of an odd-sized convolution output, which no window reads,
    are never computed. An output smaller than one window raises torch's max_pool2d error. Values
    and their bits are those of :func:`conv2d_relu` followed by max pooling, and so are the
    gradients (up to the order of their sums when the convolution output has an odd size). CPU
    tensors only."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, "relu_pool")


def _conv(input, weight, bias, stride, padding, dilation, groups, epilogue: str) -> Tensor:
    if epilogue and input.device.type != "cpu":  # the fused ops have CPU kernels only
        raise NotImplementedError(
            f"bigmodel_native.ops.{_EPILOGUES[epilogue][2]} runs on CPU tensors; got a tensor on "
            f"{input.device} (use bigmodel_native.ops.conv2d, then torch.relu and max_pool2d)"
        )
    if input.dim() not in (3, 4):
        raise RuntimeError(
            "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
            f"{list(input.shape)}"
        )
    if weight.dim() != 4:
        raise RuntimeError(f"Expected 4D weight to conv2d, but got weight of size: {list(weight.shape)}")
    stride_ = _pair("stride", stride)
    dilation_ = _pair("dilation", dilation)
    padding_ = _resolve_padding(padding, weight, stride_, dilation_)
    if input.dim() == 3:
        out = _call(input.unsqueeze(0), weight, bias, stride_, padding_, dilation_, groups, epilogue=epilogue)
        return out.squeeze(0)
    return _call(input, weight, bias, stride_, padding_, dilation_, groups, epilogue=epilogue)
