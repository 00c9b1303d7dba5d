"""CUDA kernels of ``bigmodel_native::conv2d`` and ``conv2d_backward`` (the ops live in ``conv2d.py``).

im2col (a CUDA kernel, crates/bigmodel-cuda/kernels/conv2d.cu) + one cuBLAS GEMM per chunk of images
(strided-batched over groups, fp32 accumulation into an fp32 [O, images * pixels] matrix) for the
forward, then a kernel that writes the NCHW output with the bias added (fused, one rounding).
Backward: the bias gradient by a deterministic two-pass reduction kernel; the output gradient
gathered to [O, images * pixels]; the weight gradient by one GEMM per chunk into an fp32
accumulator; the input gradient by one GEMM into an fp32 column matrix folded back by col2im. Everything
is queued on torch's current stream with memory from torch's allocator (outputs, column buffers and
cuBLAS's workspace); nothing synchronises with the host.

fp32 uses TF32 tensor cores exactly when torch's own convolutions do:
``torch.backends.cudnn.allow_tf32`` (True by default; F.conv2d on CUDA consults this flag, not
``torch.backends.cuda.matmul.allow_tf32``). float64 on CUDA raises NotImplementedError.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .. import _cuda, _native
from . import conv2d as _conv  # defines the ops before their CUDA kernels are registered
from ._library import LIB

_NAME = "bigmodel_native::conv2d"
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
#: Bytes of the fp32 column matrix per pass; larger batches run in chunks of images
#: (environment variable ``BIGMODEL_CONV_COL_BUDGET`` overrides it).
COL_BUDGET = int(os.environ.get("BIGMODEL_CONV_COL_BUDGET", 512 << 20))
#: cuBLAS workspace handed over on every call (what NVIDIA recommends for Hopper).
WORKSPACE = 32 << 20
_ALIGN = 256
_PLANS: dict[tuple, tuple[int, int, int, int, int, int]] = {}
_ready: set[int] = set()


def _same_device(*tensors: Tensor | None) -> torch.device:
    """The one device of the tensors, or torch's error for mixed devices."""
    devs = [t.device for t in tensors if t is not None]
    for d in devs[1:]:
        if d != devs[0]:
            a, b = (devs[0], d) if devs[0].type == "cuda" else (d, devs[0])
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, {a} and {b}!"
            )
    return devs[0]


def _prologue(input: Tensor, weight: Tensor, *rest: Tensor | None) -> torch.device:
    """Device and dtype checks that come after torch's argument checks (``_conv._check``)."""
    dev = _same_device(input, weight, *rest)
    if input.dtype == torch.float64:
        raise NotImplementedError(
            f"{_NAME}: float64 is not supported on CUDA by bigmodel_native's kernels (float32, bfloat16 "
            "and float16 are); use torch.nn.functional.conv2d or compute in float32"
        )
    if dev.index not in _ready:  # checked once per device and process
        _cuda.require_cuda(f"{_NAME} on CUDA tensors")
        _ready.add(dev.index)
    return dev


def _tf32(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 and bool(torch.backends.cudnn.allow_tf32)


def _shapes(input: Tensor, weight: Tensor, stride, padding, dilation, groups) -> dict:
    return dict(
        input_shape=tuple(input.shape),
        weight_shape=tuple(weight.shape),
        stride=tuple(stride),
        padding=tuple(padding),
        dilation=tuple(dilation),
        groups=groups,
    )


def _plan(shapes: dict) -> tuple[int, int, int, int, int, int]:
    """(oh, ow, chunk, col_elems, gather_elems, bias_slices), cached per shape and budget."""
    key = (*shapes.values(), COL_BUDGET)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _native.cuda_conv2d_plan(**shapes, budget_bytes=COL_BUDGET)
        if len(_PLANS) > 4096:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _scratch(dev: torch.device, sizes: list[int]) -> tuple[Tensor, list[int]]:
    """One allocation from torch's caching allocator for every scratch buffer of a call; returns it
    (keep it alive through the launch) and each buffer's address (0 for a size of 0)."""
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total if n else -1)
        total += -(-n // _ALIGN) * _ALIGN
    buf = torch.empty(total, device=dev, dtype=torch.uint8)
    base = buf.data_ptr()
    return buf, [0 if o < 0 else base + o for o in offsets]


def _conv2d_cuda(input, weight, bias, stride, padding, dilation, groups) -> Tensor:
    _same_device(input, weight, bias)
    out_hw = _conv._check(input, weight, bias, stride, padding, dilation, groups)
    dev = _prologue(input, weight, bias)
    n, o = input.shape[0], weight.shape[0]
    out = torch.empty((n, o, *out_hw), device=dev, dtype=input.dtype)
    if n == 0:
        return out
    if weight.shape[1] == 0:  # no input channels: nothing to multiply, the output is the bias
        if bias is None:
            return out.zero_()
        return out.copy_(bias.view(1, o, 1, 1).expand_as(out))
    x, w = input.contiguous(), weight.contiguous()
    b = None if bias is None else bias.contiguous()
    shapes = _shapes(x, w, stride, padding, dilation, groups)
    _, _, chunk, col_elems, tmp_elems, _ = _plan(shapes)
    sizes = [col_elems * x.element_size(), tmp_elems * 4, WORKSPACE]
    buf, (col, tmp, ws) = _scratch(dev, sizes)
    _native.cuda_conv2d_forward(
        dtype=_DTYPES[x.dtype], **shapes, x=x.data_ptr(), weight=w.data_ptr(),
        bias=0 if b is None else b.data_ptr(), out=out.data_ptr(), col=col, col_bytes=sizes[0],
        tmp=tmp, tmp_bytes=sizes[1], workspace=ws, ws_bytes=sizes[2], chunk=chunk, tf32=_tf32(x.dtype),
        device=dev.index, stream=torch.cuda.current_stream(dev).cuda_stream,
    )  # fmt: skip
    del buf  # back to the caching allocator, stream-ordered after the queued work
    return out


def _conv2d_backward_cuda(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    _same_device(input, weight, grad_output)
    out_hw = _conv._check(input, weight, None, stride, padding, dilation, groups)
    dev = _prologue(input, weight, grad_output)
    want = (input.shape[0], weight.shape[0], *out_hw)
    if tuple(grad_output.shape) != want or grad_output.dtype != input.dtype:
        raise RuntimeError(
            f"{_NAME}_backward: grad_output of size {list(grad_output.shape)} and dtype "
            f"{grad_output.dtype}, expected size {list(want)} and dtype {input.dtype}"
        )
    want_x, want_w, want_b = (bool(m) for m in output_mask)
    x, w, g = input.contiguous(), weight.contiguous(), grad_output.contiguous()
    gi = torch.empty_like(x) if want_x else None
    gw = torch.empty_like(w) if want_w else None
    gb = w.new_empty(w.shape[0]) if want_b else None
    n = x.shape[0]
    if n == 0 or w.shape[1] == 0:  # nothing flows through the product
        for t in (gw, gb if n == 0 else None):
            if t is not None:
                t.zero_()
        if gb is not None and n > 0:
            gb.copy_(g.sum(dim=(0, 2, 3), dtype=torch.float32))
    elif want_x or want_w or want_b:
        shapes = _shapes(x, w, stride, padding, dilation, groups)
        _, _, chunk, col_elems, gather_elems, slices = _plan(shapes)
        gemm = want_x or want_w
        own_acc = want_w and w.dtype != torch.float32
        sizes = [
            col_elems * 4 if gemm else 0,
            gather_elems * x.element_size() if gemm else 0,
            w.numel() * 4 if own_acc else 0,
            w.shape[0] * slices * 4 if want_b else 0,
            WORKSPACE if gemm else 0,
        ]
        buf, (col, gather, acc, partial, ws) = _scratch(dev, sizes)
        if want_w and not own_acc:
            acc = gw.data_ptr()

        def ptr(t: Tensor | None) -> int:
            return 0 if t is None or t.numel() == 0 else t.data_ptr()

        _native.cuda_conv2d_backward(
            dtype=_DTYPES[x.dtype], **shapes, grad_out=g.data_ptr(), x=x.data_ptr(),
            weight=w.data_ptr(), grad_x=ptr(gi), grad_weight=ptr(gw), grad_weight_acc=acc,
            grad_bias=ptr(gb), partial=partial, col=col, col_bytes=sizes[0], gather=gather,
            gather_bytes=sizes[1], workspace=ws, ws_bytes=sizes[4], chunk=chunk, tf32=_tf32(x.dtype),
            device=dev.index, stream=torch.cuda.current_stream(dev).cuda_stream,
        )  # fmt: skip
        del buf
    empty = x.new_empty(0)
    return (
        empty if gi is None else gi,
        empty.clone() if gw is None else gw,
        empty.clone() if gb is None else gb,
    )


LIB.impl("conv2d", _conv2d_cuda, "CUDA")
LIB.impl("conv2d_backward", _conv2d_backward_cuda, "CUDA")
