"""CUDA kernels of the ``bigmodel_native::sdpa_flash*`` ops (the ops live in ``attention.py``).

crates/bigmodel-cuda/kernels/attention.cu, on the current stream and torch's memory, with no host
synchronisation. bf16 / fp16 with equal query and value head dims of 64 or 128 run the tensor-core
kernels (mma.sync, FlashAttention-2 forward and backward); fp32, and other head dims up to 256,
run the SIMT kernels (one warp per row). The options are the CPU op's: boolean / additive masks
(compact 4-D), causal, GQA, scale, and dropout with the CPU kernel's counter-based stream (same
seed, same dropped weights as on CPU). Refused with NotImplementedError: float64 and head dims
above 256 on CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _cuda, _native
from . import attention as _attn  # defines the ops before their CUDA kernels are registered
from ._library import LIB

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_MAX_DIM = 256


def _check(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, what: str) -> tuple[int, ...]:
    _cuda.require_cuda(f"bigmodel_native's CUDA attention ({what})")
    shape = _attn._shape(q, k, v)
    dev = q.device
    for name, t in (("k", k), ("v", v), ("attn_mask", mask)):
        if t is not None and t.device != dev:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{dev} and {t.device}! ({what}: {name})"
            )
    if q.dtype not in _DTYPES:
        raise NotImplementedError(
            f"bigmodel_native scaled_dot_product_attention on CUDA supports float32, bfloat16 and "
            f"float16, got {q.dtype}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise RuntimeError(f"{what}: q, k and v must share a dtype")
    if shape[5] > _MAX_DIM or shape[6] > _MAX_DIM:
        raise NotImplementedError(
            f"bigmodel_native scaled_dot_product_attention on CUDA supports head dims up to {_MAX_DIM}, "
            f"got {shape[5]} (query/key) and {shape[6]} (value)"
        )
    if mask is not None and mask.dtype not in (torch.bool, torch.float32):
        raise RuntimeError(f"{what}: the mask must be bool or float32 on CUDA, got {mask.dtype}")
    return shape


def _aligned(t: Tensor) -> Tensor:
    """Contiguous, with a 16-byte aligned start (the tensor-core kernels copy 16 bytes at a time)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _mask_kw(mask: Tensor | None) -> dict:
    kind, dims = _attn._mask_args(mask)
    m = None if mask is None else mask.contiguous()
    return dict(mask=0 if m is None else m.data_ptr(), mask_kind=kind, mask_dims=dims), m


def _sdpa_flash_cuda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    scale: float,
    is_causal: bool,
    dropout_p: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    shape = _check(q, k, v, mask, _attn._FWD)
    b, hq, _, lq, _, _, ev = shape
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    out = torch.empty((b, hq, lq, ev), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, lq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    kw, m = _mask_kw(mask)
    _native.cuda_attention_forward(
        dtype=_DTYPES[q.dtype], q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), out=out.data_ptr(),
        lse=lse.data_ptr(), shape=shape, scale=float(scale), causal=bool(is_causal),
        dropout_p=float(dropout_p), seed=int(seed), device=q.device.index,
        stream=torch.cuda.current_stream(q.device).cuda_stream, **kw,
    )  # fmt: skip
    del m  # alive through the (asynchronous) launch: torch's allocator orders reuse on the stream
    return out, lse


def _sdpa_flash_backward_cuda(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    mask: Tensor | None,
    scale: float,
    is_causal: bool,
    dropout_p: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    shape = _check(q, k, v, mask, _attn._BWD)
    if grad_out.shape != out.shape:
        raise RuntimeError(
            f"{_attn._BWD}: grad_out shape {tuple(grad_out.shape)} != out shape {tuple(out.shape)}"
        )
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if dq.numel() == 0 and dk.numel() == 0 and dv.numel() == 0:
        return dq, dk, dv
    if out.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    out, g = _aligned(out), _aligned(grad_out.to(q.dtype))
    lse = lse.to(torch.float32).contiguous()
    dtype = _DTYPES[q.dtype]
    b, hq, _, lq, _, e, _ = shape
    delta = torch.empty((b, hq, lq), dtype=torch.float32, device=q.device)
    mma = _native.cuda_attention_path(dtype, shape)[0] == "mma"
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if mma else None
    kw, m = _mask_kw(mask)
    _native.cuda_attention_backward(
        dtype=dtype, q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), out=out.data_ptr(),
        lse=lse.data_ptr(), dout=g.data_ptr(), delta=delta.data_ptr(),
        dq_acc=0 if dq_acc is None else dq_acc.data_ptr(), dq=dq.data_ptr(), dk=dk.data_ptr(),
        dv=dv.data_ptr(), shape=shape, scale=float(scale), causal=bool(is_causal),
        dropout_p=float(dropout_p), seed=int(seed), device=q.device.index,
        stream=torch.cuda.current_stream(q.device).cuda_stream, **kw,
    )  # fmt: skip
    del m
    return dq, dk, dv


LIB.impl(_attn._FWD, _sdpa_flash_cuda, "CUDA")
LIB.impl(_attn._BWD, _sdpa_flash_backward_cuda, "CUDA")
