"""``scaled_dot_product_attention``: flash-style attention on CPU, forward and backward in Rust.

Two ops carry the work, on contiguous ``(B, H, L, E)`` tensors:

- ``bigmodel_native::sdpa_flash(q, k, v, mask, scale, is_causal, dropout_p, seed) -> (out, lse)``
  runs the FlashAttention-2 forward (query tiles against key tiles with an online softmax; only
  the per-row log-sum-exp ``lse`` is saved, never the L x S matrix);
- ``bigmodel_native::sdpa_flash_backward(grad_out, q, k, v, out, lse, mask, ...) -> (dq, dk, dv)``
  recomputes the probability tiles from ``lse``.

``k``/``v`` may have fewer heads than ``q`` (grouped-query attention: query head ``h`` reads kv
head ``h // (Hq / Hkv)``); the kernel reads the shared heads in place. ``mask`` is compact: 4-D,
each dimension 1 (broadcast) or full, ``torch.bool`` (True = attend) or additive in the
arithmetic dtype (float64 for float64 queries, float32 otherwise). Dropout draws one
seed from torch's default generator per call (so ``torch.manual_seed`` makes it reproducible);
the kernel's counter-based stream regenerates the same keep-mask in the backward pass. Its
random stream is not torch's, so dropped positions differ from torch's while the statistics match.

:func:`scaled_dot_product_attention` is the drop-in for ``F.scaled_dot_product_attention``: it
checks arguments as torch does, broadcasts batch dimensions, compacts the mask and flattens to
the op's layout. Dtypes: float32, float64, bfloat16 and float16 (the last two computed in
float32). CUDA tensors run the kernels of ``attention_cuda.py`` (tensor cores for bf16 / fp16
with head dim 64 or 128). Not supported (``NotImplementedError``, never a silent fallback): devices
other than CPU and CUDA, float64 or head dims above 256 on CUDA, gradients with respect to a float
``attn_mask`` on CUDA, head dimension 0. On CPU a float ``attn_mask`` that requires grad gets its
gradient from the backward kernel (``sdpa_flash_mask_backward``), at the cost of one L x S
matrix per head during that backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _native
from .._threads import get_num_threads
from ._eager import mark_auxiliary_outputs
from ._library import LIB

_FWD = "sdpa_flash"
_BWD = "sdpa_flash_backward"
LIB.define(
    f"{_FWD}(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, bool is_causal, "
    "float dropout_p, int seed) -> (Tensor, Tensor)"
)
LIB.define(
    f"{_BWD}(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? mask, "
    "float scale, bool is_causal, float dropout_p, int seed) -> (Tensor, Tensor, Tensor)"
)
_BWD_MASK = "sdpa_flash_mask_backward"
LIB.define(
    f"{_BWD_MASK}(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor mask, "
    "float scale, bool is_causal, float dropout_p, int seed) -> (Tensor, Tensor, Tensor, Tensor)"
)

_SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mask_args(mask: Tensor | None) -> tuple[str, tuple[int, int, int, int]]:
    if mask is None:
        return "none", (1, 1, 1, 1)
    if mask.dim() != 4:
        raise RuntimeError(f"{_FWD}: the mask must be 4-D (compact), got shape {tuple(mask.shape)}")
    kind = "bool" if mask.dtype == torch.bool else "float"
    return kind, tuple(mask.shape)  # type: ignore[return-value]


def _shape(q: Tensor, k: Tensor, v: Tensor) -> tuple[int, ...]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise RuntimeError(f"{_FWD}: {name} must be 4-D (B, H, L, E), got shape {tuple(t.shape)}")
    b, hq, lq, e = q.shape
    if k.shape[0] != b or v.shape[0] != b or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise RuntimeError(
            f"{_FWD}: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[3] != e:
        raise RuntimeError(f"{_FWD}: query and key head dims differ ({e} vs {k.shape[3]})")
    return (b, hq, k.shape[1], lq, k.shape[2], e, v.shape[3])


def _sdpa_flash_cpu(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    scale: float,
    is_causal: bool,
    dropout_p: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    shape = _shape(q, k, v)
    b, hq, _, lq, _, _, ev = shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty((b, hq, lq, ev), dtype=q.dtype)
    lse = torch.empty((b, hq, lq), dtype=_acc_dtype(q.dtype))
    kind, dims = _mask_args(mask)
    m = None if mask is None else mask.contiguous()
    if out.numel():
        _native.attention_forward(
            q, k, v, out, lse, m, kind, dims, shape, scale, is_causal, dropout_p, seed, get_num_threads()
        )
    else:
        lse.fill_(float("-inf"))
    return out, lse


def _sdpa_flash_fake(q, k, v, mask, scale, is_causal, dropout_p, seed):  # type: ignore[no-untyped-def]
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: f"{_FWD}: expects 4-D tensors")
    b, hq, lq, _ = q.shape
    out = q.new_empty((b, hq, lq, v.shape[3]))
    lse = q.new_empty((b, hq, lq), dtype=_acc_dtype(q.dtype))
    return out, lse


def _native_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    mask: Tensor | None,
    params: tuple[float, bool, float, int],
    grad_scores: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv from the kernel (and the scores' gradient into ``grad_scores`` if given)."""
    shape = _shape(q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if grad_out.shape != out.shape:
        raise RuntimeError(f"{_BWD}: grad_out shape {tuple(grad_out.shape)} != out shape {tuple(out.shape)}")
    if dq.numel() == 0 and dk.numel() == 0 and dv.numel() == 0:
        return dq, dk, dv
    if out.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    kind, dims = _mask_args(mask)
    m = None if mask is None else mask.contiguous()
    _native.attention_backward(
        q, k, v, out.contiguous(), lse.contiguous(), grad_out.contiguous().to(q.dtype), dq, dk, dv,
        m, kind, dims, shape, *params, get_num_threads(), grad_scores=grad_scores,
    )  # fmt: skip
    return dq, dk, dv


def _sdpa_flash_backward_cpu(
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
    return _native_backward(grad_out, q, k, v, out, lse, mask, (scale, is_causal, dropout_p, seed))


def _sdpa_flash_backward_fake(grad_out, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed):  # type: ignore[no-untyped-def]
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _sdpa_flash_mask_backward_cpu(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    mask: Tensor,
    scale: float,
    is_causal: bool,
    dropout_p: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward with the gradient of an additive (float) mask as a fourth result.

    The kernel writes the scores' gradient dS = P (dP - Delta) for every (batch, head, query,
    key), one L x S matrix per head (the one place this op holds one, and only when the mask
    requires a gradient); it is then summed over the compact mask's broadcast dimensions.
    """
    if mask.dtype == torch.bool or mask.dim() != 4:
        raise RuntimeError(f"{_BWD_MASK}: the mask must be a 4-D additive (float) mask")
    b, hq, _, lq, lk, _, _ = _shape(q, k, v)
    ds = torch.zeros((b, hq, lq, lk), dtype=_acc_dtype(q.dtype))
    params = (scale, is_causal, dropout_p, seed)
    dq, dk, dv = _native_backward(grad_out, q, k, v, out, lse, mask, params, ds)
    return dq, dk, dv, ds.sum_to_size(mask.shape).to(mask.dtype)


def _sdpa_flash_mask_backward_fake(grad_out, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed):  # type: ignore[no-untyped-def]
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(mask)


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    q, k, v, mask, scale, is_causal, dropout_p, seed = inputs
    out, lse = output
    mark_auxiliary_outputs(ctx, lse)
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.params = (scale, is_causal, dropout_p, seed)


def _backward(ctx, grad_out, _grad_lse):  # type: ignore[no-untyped-def]
    if grad_out is None:  # nothing flows back
        return (None,) * 8
    q, k, v, out, lse, mask = ctx.saved_tensors
    if mask is not None and mask.dtype != torch.bool and ctx.needs_input_grad[3]:
        dq, dk, dv, dmask = torch.ops.bigmodel_native.sdpa_flash_mask_backward(
            grad_out, q, k, v, out, lse, mask, *ctx.params
        )
        return dq, dk, dv, dmask, None, None, None, None
    dq, dk, dv = torch.ops.bigmodel_native.sdpa_flash_backward(grad_out, q, k, v, out, lse, mask, *ctx.params)
    return dq, dk, dv, None, None, None, None, None


LIB.impl(_FWD, _sdpa_flash_cpu, "CPU")
LIB.impl(_BWD, _sdpa_flash_backward_cpu, "CPU")
LIB.impl(_BWD_MASK, _sdpa_flash_mask_backward_cpu, "CPU")
torch.library.register_fake(f"bigmodel_native::{_BWD_MASK}", _sdpa_flash_mask_backward_fake, lib=LIB)
torch.library.register_fake(f"bigmodel_native::{_FWD}", _sdpa_flash_fake, lib=LIB)
torch.library.register_fake(f"bigmodel_native::{_BWD}", _sdpa_flash_backward_fake, lib=LIB)
torch.library.register_autograd(f"bigmodel_native::{_FWD}", _backward, setup_context=_setup_context, lib=LIB)


# --- the drop-in -------------------------------------------------------------------------


def _check_inputs(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, dropout_p: float, is_causal: bool
) -> None:
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise RuntimeError(
            "Expected query, key, and value to all be  at least 2 dimensional, but got "
            f"query.dim: {query.dim()} key.dim: {key.dim()} and value.dim: {value.dim()} instead."
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(
            "Expected query, key, and value to have the same dtype, but got "
            f"query.dtype: {query.dtype} key.dtype: {key.dtype} and value.dtype: {value.dtype} instead."
        )
    for t in (query, key, value, attn_mask):
        if t is None:
            continue
        if t.device.type not in ("cpu", "cuda"):
            raise NotImplementedError(
                f"bigmodel_native scaled_dot_product_attention runs on CPU and CUDA tensors, got {t.device}"
            )
        if t.device != query.device:
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two devices, "
                f"{query.device} and {t.device}!"
            )
    if query.dtype not in _SUPPORTED:
        raise RuntimeError(f"expected a floating-point query, key and value, got {query.dtype}")
    if query.size(-1) != key.size(-1):
        raise RuntimeError(
            f"Expected query and key to have the same head dimension, got {query.size(-1)} and {key.size(-1)}"
        )
    if key.size(-2) != value.size(-2):
        raise RuntimeError(
            "Expected key and value to have the same sequence length, got "
            f"{key.size(-2)} and {value.size(-2)}"
        )
    if query.size(-1) == 0:
        raise NotImplementedError("bigmodel_native scaled_dot_product_attention: head dimension 0")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and not (
            attn_mask.dtype == query.dtype or attn_mask.dtype == torch.float32
        ):
            raise RuntimeError(
                "Expected attn_mask dtype to be bool or float or to match query dtype, but got "
                f"attn_mask.dtype: {attn_mask.dtype} and  query.dtype: {query.dtype} instead."
            )
        if is_causal:
            raise RuntimeError(
                "_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True"
            )
        if attn_mask.requires_grad and torch.is_grad_enabled() and attn_mask.is_cuda:
            raise NotImplementedError(
                "bigmodel_native scaled_dot_product_attention: gradients with respect to attn_mask "
                "run on CPU tensors only; on CUDA pass attn_mask.detach()"
            )
    if not 0.0 <= dropout_p <= 1.0:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {dropout_p}")


def _compact_mask(mask: Tensor, lead: tuple[int, ...], h: int, lq: int, s: int, dtype: torch.dtype) -> Tensor:
    """The mask broadcast to (*lead, H, L, S), then shrunk to 4-D with broadcast dims kept at 1."""
    full = mask.expand(*lead, h, lq, s)
    m = full
    for d in range(m.dim()):
        if m.stride(d) == 0 and m.size(d) > 1:
            m = m.narrow(d, 0, 1)
    nb = len(lead)
    lead_now = m.shape[:nb]
    b = math.prod(lead)
    if math.prod(lead_now) not in (1, b):
        m = m.expand(*lead, *m.shape[nb:])
    bm = math.prod(m.shape[:nb])
    m = m.reshape(bm, *m.shape[nb:])
    if m.dtype != torch.bool:
        m = m.to(_acc_dtype(dtype))
    return m.contiguous()


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention`` (same signature)."""
    _check_inputs(query, key, value, attn_mask, dropout_p, is_causal)
    lq, e = query.shape[-2:]
    s, ev = key.size(-2), value.size(-1)
    nb = max(query.dim(), key.dim(), value.dim()) - 2
    qb, kb, vb = ([1] * (nb - t.dim() + 2) + list(t.shape[:-2]) for t in (query, key, value))
    if nb == 0:
        lead: tuple[int, ...] = ()
        hq = hk = hv = 1
    else:
        lead = tuple(torch.broadcast_shapes(tuple(qb[:-1]), tuple(kb[:-1]), tuple(vb[:-1])))
        hq, hk, hv = qb[-1], kb[-1], vb[-1]
    if enable_gqa and nb >= 1 and (hk != hq or hv != hq):
        if hq % hk or hq % hv:
            raise RuntimeError("Number of heads in key and value must divide the number of heads in query")
        h = hq
        if hk != hv:  # different groupings for k and v: give both one kv head per query head
            key, value = key.repeat_interleave(hq // hk, -3), value.repeat_interleave(hq // hv, -3)
            hk = hv = hq
        hkv = hk
    else:
        h = torch.broadcast_shapes((hq,), (hk,), (hv,))[0]
        hkv = 1 if hk == hv == 1 else h  # one shared kv head is native multi-query attention
    b = math.prod(lead)
    q4 = query.expand(*lead, h, lq, e).reshape(b, h, lq, e)
    k4 = key.expand(*lead, hkv, s, e).reshape(b, hkv, s, e)
    v4 = value.expand(*lead, hkv, s, ev).reshape(b, hkv, s, ev)
    out_shape = (*lead, h, lq, ev) if nb else (lq, ev)
    sc = 1.0 / math.sqrt(e) if scale is None else float(scale)
    if dropout_p >= 1.0:
        # Every weight dropped: torch returns zeros; keep the graph so gradients are (zero) defined.
        zero = (query.sum() + key.sum() + value.sum()) * 0.0
        return torch.zeros(out_shape, dtype=query.dtype, device=query.device) + zero
    mask = None if attn_mask is None else _compact_mask(attn_mask, lead or (1,), h, lq, s, query.dtype)
    if mask is not None and not lead:
        mask = mask.reshape(1, *mask.shape[-3:]) if mask.dim() == 4 else mask
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64)) if dropout_p > 0.0 else 0
    out, _ = torch.ops.bigmodel_native.sdpa_flash(
        q4, k4, v4, mask, sc, bool(is_causal), float(dropout_p), seed
    )
    return out.reshape(out_shape)
