"""bigmodel_native.ops.scaled_dot_product_attention / nn.MultiheadAttention on CUDA (needs a GPU).

The options of the CPU tests (tests/ops/test_attention.py) against F.scaled_dot_product_attention
on the same CUDA tensors (fp32 inputs: an fp64 reference; bf16 / fp16: an fp32 reference from the
same values), forward and gradients: partial tiles, head dims, causal alignment, bool / float
masks that broadcast, fully masked rows, GQA, scale; the tensor-core kernels (bf16 / fp16, head
dim 64 and 128) over lengths around their tiles; dropout against the CPU op with the same seed
(the same dropped weights); opcheck on CUDA tensors; no host synchronisation; clear refusals.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native.nn import MultiheadAttention
from bigmodel_native.ops import scaled_dot_product_attention as sdpa

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}
LOW = (torch.bfloat16, torch.float16)


def _inputs(qs, ks, vs, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=g, dtype=torch.float64).to(DEV, dtype).requires_grad_() for s in (qs, ks, vs)
    ]


def _compare(qs, ks, vs, dtype=torch.float32, grad_scale=4.0, **kw):
    q, k, v = _inputs(qs, ks, vs, dtype)
    ours = sdpa(q, k, v, **kw)
    ref_dtype = torch.float32 if dtype in LOW else torch.float64
    ref_in = tuple(t.detach().to(ref_dtype).requires_grad_() for t in (q, k, v))
    mask = kw.get("attn_mask")
    if mask is not None:  # torch's CUDA kernels want the bias's last dim contiguous: give the full mask
        full = torch.broadcast_shapes(mask.shape, (*q.shape[:-1], k.shape[-2]))
        mask = mask.expand(full).contiguous()
        mask = mask.to(ref_dtype) if mask.is_floating_point() else mask
    kw_ref = dict(kw, attn_mask=mask)
    ref = F.scaled_dot_product_attention(*ref_in, **kw_ref)
    assert ours.shape == ref.shape and ours.dtype == q.dtype and ours.device == q.device
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(ours.to(ref.dtype), ref, atol=atol, rtol=rtol)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEV)
    got = torch.autograd.grad(ours, (q, k, v), g.to(dtype))
    want = torch.autograd.grad(ref, ref_in, g.to(ref_dtype))
    for name, a, b in zip("qkv", got, want, strict=True):
        s = grad_scale if dtype in LOW else 1.0
        torch.testing.assert_close(a.to(b.dtype), b, atol=atol * s, rtol=rtol * s, msg=f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "qs,ks,vs",
    [
        ((2, 3, 1, 16), (2, 3, 1, 16), (2, 3, 1, 16)),
        ((2, 3, 1, 16), (2, 3, 77, 16), (2, 3, 77, 16)),
        ((1, 2, 67, 8), (1, 2, 131, 8), (1, 2, 131, 24)),
        ((1, 1, 150, 32), (1, 1, 600, 32), (1, 1, 600, 32)),
        ((2, 33, 64), (2, 40, 64), (2, 40, 64)),
        ((9, 16), (13, 16), (13, 16)),
        ((2, 2, 3, 21, 8), (2, 2, 3, 21, 8), (2, 2, 3, 21, 8)),
        ((2, 1, 19, 8), (1, 3, 23, 8), (1, 3, 23, 8)),
    ],
)
def test_parity_shapes(qs, ks, vs, dtype):
    _compare(qs, ks, vs, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [8, 40, 64, 128, 256])
def test_head_dims(d, dtype):
    _compare((1, 2, 37, d), (1, 2, 45, d), (1, 2, 45, d), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq,s", [(1, 1), (64, 64), (77, 77), (130, 70), (70, 130), (200, 333), (257, 257)])
def test_tensor_core_path(lq, s, causal, d, dtype):
    _compare((2, 3, lq, d), (2, 3, s, d), (2, 3, s, d), dtype=dtype, is_causal=causal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lq,s", [(70, 70), (130, 70), (40, 200), (1, 5), (200, 700)])
def test_causal_alignment(lq, s, dtype):
    d = 64 if dtype == torch.bfloat16 else 16
    _compare((1, 2, lq, d), (1, 2, s, d), (1, 2, s, d), dtype=dtype, is_causal=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "mask_shape", [(37, 45), (1, 45), (2, 1, 1, 45), (2, 3, 37, 45), (3, 37, 1), (2, 1, 37, 45)]
)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_broadcast(mask_shape, kind, dtype):
    g = torch.Generator().manual_seed(3)
    if kind == "bool":
        mask = torch.rand(mask_shape, generator=g) > 0.3
    else:
        mask = torch.randn(mask_shape, generator=g)
        mask[torch.rand(mask_shape, generator=g) > 0.8] = float("-inf")
    d = 64 if dtype == torch.bfloat16 else 8
    _compare((2, 3, 37, d), (2, 3, 45, d), (2, 3, 45, d), dtype=dtype, attn_mask=mask.to(DEV))


@pytest.mark.parametrize("d,dtype", [(8, torch.float32), (64, torch.bfloat16)])
def test_fully_masked_rows_give_zeros(d, dtype):
    mask = torch.ones(5, 7, dtype=torch.bool, device=DEV)
    mask[2] = False
    q, k, v = _inputs((1, 1, 5, d), (1, 1, 7, d), (1, 1, 7, d), dtype)
    out = sdpa(q, k, v, attn_mask=mask)
    assert torch.all(out[0, 0, 2] == 0)
    out.sum().backward()
    assert torch.all(q.grad[0, 0, 2] == 0) and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()


@pytest.mark.parametrize("d,dtype", [(16, torch.float32), (64, torch.bfloat16), (128, torch.float16)])
@pytest.mark.parametrize("hq,hk,hv", [(8, 2, 2), (6, 3, 3), (4, 1, 1), (4, 2, 1)])
def test_gqa(hq, hk, hv, d, dtype):
    _compare((2, hq, 29, d), (2, hk, 141, d), (2, hv, 141, d), dtype=dtype, enable_gqa=True)
    _compare((2, hq, 129, d), (2, hk, 141, d), (2, hv, 141, d), dtype=dtype, enable_gqa=True, is_causal=True)


@pytest.mark.parametrize("d,dtype", [(16, torch.float32), (64, torch.bfloat16)])
def test_scale_and_multi_query_without_gqa(d, dtype):
    _compare((2, 4, 21, d), (2, 4, 33, d), (2, 4, 33, d), dtype=dtype, scale=0.37)
    _compare((2, 4, 21, d), (2, 1, 33, d), (2, 1, 33, d), dtype=dtype)


def test_empty_and_zero_length_keys():
    for dtype, d in ((torch.float32, 8), (torch.bfloat16, 64)):
        q, k, v = _inputs((2, 2, 0, d), (2, 2, 5, d), (2, 2, 5, d), dtype)
        assert sdpa(q, k, v).shape == (2, 2, 0, d)
        q, k, v = _inputs((2, 2, 4, d), (2, 2, 0, d), (2, 2, 0, d), dtype)
        out = sdpa(q, k, v)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
        out.sum().backward()
        assert torch.all(q.grad == 0)


@pytest.mark.parametrize("d,dtype", [(16, torch.float32), (64, torch.bfloat16), (128, torch.float16)])
@pytest.mark.parametrize("causal", [False, True])
def test_dropout_matches_the_cpu_op(d, dtype, causal):
    """Same seed, same dropped weights as the CPU kernel: forward and gradients agree."""
    q, k, v = _inputs((2, 4, 70, d), (2, 2, 90, d), (2, 2, 90, d), dtype)
    op = torch.ops.bigmodel_native.sdpa_flash
    args = (None, 0.2, causal, 0.3, 12345)
    out, _ = op(q, k, v, *args)
    qc, kc, vc = (t.detach().cpu().float().requires_grad_() for t in (q, k, v))
    ref, _ = op(qc, kc, vc, *args)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.cpu().float(), ref, atol=atol, rtol=rtol)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(out, (q, k, v), g.to(DEV, dtype))
    want = torch.autograd.grad(ref, (qc, kc, vc), g)
    s = 4.0 if dtype in LOW else 1.0
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a.cpu().float(), b, atol=atol * s, rtol=rtol * s, msg=f"d{name}")


def test_dropout_statistics_and_reproducibility():
    q, k, v = _inputs((4, 4, 64, 64), (4, 4, 64, 64), (4, 4, 64, 64), torch.bfloat16)
    torch.manual_seed(5)
    a = sdpa(q, k, v, dropout_p=0.3)
    torch.manual_seed(5)
    b = sdpa(q, k, v, dropout_p=0.3)
    assert torch.equal(a, b)
    assert not torch.equal(a, sdpa(q, k, v, dropout_p=0.3))
    ones = torch.ones(4, 4, 64, 64, device=DEV, dtype=torch.bfloat16)
    mean = torch.stack([sdpa(q, k, ones, dropout_p=0.3).float() for _ in range(20)]).mean().item()
    assert abs(mean - 1.0) < 0.02, mean
    assert torch.all(sdpa(q, k, v, dropout_p=1.0) == 0)


@pytest.mark.parametrize("d,dtype", [(8, torch.float32), (64, torch.bfloat16)])
def test_opcheck(d, dtype):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(DEV, dtype).requires_grad_()  # noqa: E731
    q, k, v = mk(1, 4, 9, d), mk(1, 2, 11, d), mk(1, 2, 11, d)
    mask = (torch.rand(1, 1, 9, 11, generator=g) > 0.2).to(DEV)
    op = torch.ops.bigmodel_native.sdpa_flash
    for args in [(q, k, v, None, 0.3, True, 0.0, 0), (q, k, v, mask, 0.5, False, 0.25, 123)]:
        torch.library.opcheck(op, args)
    out, lse = op(q, k, v, None, 0.3, False, 0.0, 0)
    bwd = (
        torch.randn_like(out),
        q.detach(),
        k.detach(),
        v.detach(),
        out.detach(),
        lse,
        None,
        0.3,
        False,
        0.0,
        0,
    )
    torch.library.opcheck(torch.ops.bigmodel_native.sdpa_flash_backward, bwd)


def test_fp32_gradcheck_small():
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEV)  # noqa: E731
    q, k, v = mk(1, 2, 5, 8), mk(1, 1, 6, 8), mk(1, 1, 6, 8)
    # fp32 kernel vs fp64 reference with tolerances for fp32 rounding.
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    out = sdpa(qf, kf, vf, is_causal=True, enable_gqa=True)
    ref = F.scaled_dot_product_attention(q, k.expand(1, 2, 6, 8), v.expand(1, 2, 6, 8), is_causal=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-5)


def test_no_host_synchronisation():
    q, k, v = _inputs((2, 4, 300, 64), (2, 4, 300, 64), (2, 4, 300, 64), torch.bfloat16)
    out = sdpa(q, k, v, is_causal=True)  # compile the kernels first
    out.sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = torch.ops.bigmodel_native.sdpa_flash(q, k, v, None, 0.125, True, 0.0, 0)[0]
        torch.ops.bigmodel_native.sdpa_flash_backward(
            torch.ones_like(out), q.detach(), k.detach(), v.detach(), out.detach(),
            torch.ops.bigmodel_native.sdpa_flash(q, k, v, None, 0.125, True, 0.0, 0)[1],
            None, 0.125, True, 0.0, 0,
        )  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_refusals():
    q, k, v = _inputs((1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8), torch.float32)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        sdpa(q, k.detach().cpu(), v)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        sdpa(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="float64"):
        sdpa(*(t.double() for t in (q, k, v)))
    big = torch.randn(1, 1, 4, 320, device=DEV)
    with pytest.raises(NotImplementedError, match="head dims up to 256"):
        sdpa(big, big, big)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multihead_attention(dtype):
    torch.manual_seed(0)
    kw = dict(embed_dim=256, num_heads=4, batch_first=True)
    ref = torch.nn.MultiheadAttention(**kw).to(DEV)
    ours = MultiheadAttention(**kw).to(DEV)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 50, 256, device=DEV)
    if dtype != torch.float32:
        ref, ours, x = ref.to(dtype), ours.to(dtype), x.to(dtype)
    a, _ = ours(x, x, x, need_weights=False)
    b, _ = ref.float()(x.float(), x.float(), x.float(), need_weights=False)
    tol = 3e-2 if dtype in LOW else 1e-4
    torch.testing.assert_close(a.float(), b, atol=tol, rtol=tol)
    a.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters())
