"""bigmodel_native.ops.scaled_dot_product_attention and nn.MultiheadAttention against torch.

Forward and gradients of q, k, v against ``F.scaled_dot_product_attention`` over shapes that hit
partial tiles (odd lengths, L = 1, L != S, lengths past one key tile), head dims 8..256, bool and
float masks that broadcast, causal, GQA, custom scale and dtypes; bad inputs; dropout statistics
and reproducibility; opcheck and fp64 gradcheck of the custom ops.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native.nn import MultiheadAttention
from bigmodel_native.ops import scaled_dot_product_attention as sdpa

TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}


def _inputs(qs, ks, vs, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in (qs, ks, vs)]


def _compare(qs, ks, vs, dtype=torch.float32, **kw):
    q, k, v = _inputs(qs, ks, vs, dtype)
    ours = sdpa(q, k, v, **kw)
    if dtype in (torch.bfloat16, torch.float16):
        # torch's reference in fp32 from the same bf16 values: ours accumulates in fp32 too.
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        mask = kw.get("attn_mask")
        kw32 = dict(kw, attn_mask=mask.float() if mask is not None and mask.is_floating_point() else mask)
        ref = F.scaled_dot_product_attention(q32, k32, v32, **kw32)
        ref_in = (q32, k32, v32)
    else:
        ref = F.scaled_dot_product_attention(q, k, v, **kw)
        ref_in = (q, k, v)
    assert ours.shape == ref.shape and ours.dtype == q.dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(ours.to(ref.dtype), ref, atol=atol, rtol=rtol)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    got = torch.autograd.grad(ours, (q, k, v), g.to(dtype))
    want = torch.autograd.grad(ref, ref_in, g)
    for name, a, b in zip("qkv", got, want, strict=True):
        scale = 4.0 if dtype in (torch.bfloat16, torch.float16) else 1.0
        torch.testing.assert_close(a.to(b.dtype), b, atol=atol * scale, rtol=rtol * scale, msg=f"d{name}")


@pytest.mark.parametrize(
    "qs,ks,vs",
    [
        ((2, 3, 1, 16), (2, 3, 1, 16), (2, 3, 1, 16)),  # L = S = 1
        ((2, 3, 1, 16), (2, 3, 77, 16), (2, 3, 77, 16)),  # decode step
        ((1, 2, 67, 8), (1, 2, 131, 8), (1, 2, 131, 24)),  # odd, L != S, Ev != E
        ((1, 1, 150, 32), (1, 1, 600, 32), (1, 1, 600, 32)),  # more than one forward key tile
        ((2, 33, 64), (2, 40, 64), (2, 40, 64)),  # 3-D
        ((9, 16), (13, 16), (13, 16)),  # 2-D
        ((2, 2, 3, 21, 8), (2, 2, 3, 21, 8), (2, 2, 3, 21, 8)),  # two leading batch dims
        ((2, 1, 19, 8), (1, 3, 23, 8), (1, 3, 23, 8)),  # broadcast batch and heads
    ],
)
def test_parity_shapes(qs, ks, vs):
    _compare(qs, ks, vs)


@pytest.mark.parametrize("d", [8, 40, 64, 128, 256])
def test_head_dims(d):
    _compare((1, 2, 37, d), (1, 2, 45, d), (1, 2, 45, d))


@pytest.mark.parametrize("lq,s", [(70, 70), (130, 70), (40, 200), (1, 5), (200, 700), (1100, 1050)])
def test_causal_alignment(lq, s):
    _compare((1, 2, lq, 16), (1, 2, s, 16), (1, 2, s, 16), is_causal=True)


@pytest.mark.parametrize(
    "mask_shape", [(37, 45), (1, 45), (2, 1, 1, 45), (2, 3, 37, 45), (3, 37, 1), (2, 1, 37, 45)]
)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_broadcast(mask_shape, kind):
    g = torch.Generator().manual_seed(3)
    if kind == "bool":
        mask = torch.rand(mask_shape, generator=g) > 0.3
    else:
        mask = torch.randn(mask_shape, generator=g)
        mask[torch.rand(mask_shape, generator=g) > 0.8] = float("-inf")
    _compare((2, 3, 37, 8), (2, 3, 45, 8), (2, 3, 45, 8), attn_mask=mask)


def test_fully_masked_rows_give_zeros():
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[2] = False
    _compare((1, 1, 5, 8), (1, 1, 7, 8), (1, 1, 7, 8), attn_mask=mask)
    q, k, v = _inputs((1, 1, 5, 8), (1, 1, 7, 8), (1, 1, 7, 8), torch.float32)
    assert torch.all(sdpa(q, k, v, attn_mask=mask)[0, 0, 2] == 0)


@pytest.mark.parametrize("hq,hk,hv", [(8, 2, 2), (6, 3, 3), (4, 1, 1), (4, 2, 1)])
def test_gqa(hq, hk, hv):
    _compare((2, hq, 29, 16), (2, hk, 41, 16), (2, hv, 41, 16), enable_gqa=True)
    _compare((2, hq, 29, 16), (2, hk, 41, 16), (2, hv, 41, 16), enable_gqa=True, is_causal=True)


def test_scale_and_multi_query_without_gqa():
    _compare((2, 4, 21, 16), (2, 4, 33, 16), (2, 4, 33, 16), scale=0.37)
    _compare((2, 4, 21, 16), (2, 1, 33, 16), (2, 1, 33, 16))  # one kv head broadcasts


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    _compare((2, 2, 45, 32), (2, 2, 70, 32), (2, 2, 70, 32), dtype=dtype)
    _compare((2, 2, 70, 32), (2, 2, 70, 32), (2, 2, 70, 32), dtype=dtype, is_causal=True)
    mask = torch.randn(45, 70)
    _compare((2, 2, 45, 32), (2, 2, 70, 32), (2, 2, 70, 32), dtype=dtype, attn_mask=mask.to(dtype))


def test_empty_and_zero_length_keys():
    q, k, v = _inputs((2, 2, 0, 8), (2, 2, 5, 8), (2, 2, 5, 8), torch.float32)
    assert sdpa(q, k, v).shape == (2, 2, 0, 8)
    q, k, v = _inputs((2, 2, 4, 8), (2, 2, 0, 8), (2, 2, 0, 8), torch.float32)
    out = sdpa(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    out.sum().backward()
    assert torch.all(q.grad == 0)


def test_dropout_statistics_and_reproducibility():
    q, k, v = _inputs((4, 4, 64, 16), (4, 4, 64, 16), (4, 4, 64, 16), torch.float64)
    torch.manual_seed(5)
    a = sdpa(q, k, v, dropout_p=0.3)
    torch.manual_seed(5)
    b = sdpa(q, k, v, dropout_p=0.3)
    assert torch.equal(a, b)
    c = sdpa(q, k, v, dropout_p=0.3)
    assert not torch.equal(a, c)
    # Expectation over masks is the undropped output; averaged weights v = identity rows
    # expose the keep rate directly: with v = ones, out = sum_j p_ij keep_ij / (1 - p).
    ones = torch.ones(4, 4, 64, 16, dtype=torch.float64)
    outs = torch.stack([sdpa(q, k, ones, dropout_p=0.3) for _ in range(20)])
    mean = outs.mean().item()
    assert abs(mean - 1.0) < 0.02, mean
    # The backward regenerates the forward's mask: gradient check with the seed fixed.
    torch.manual_seed(9)
    out = sdpa(q, k, v, dropout_p=0.3)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)

    def f(q_, k_, v_):
        torch.manual_seed(9)
        return (sdpa(q_, k_, v_, dropout_p=0.3) * g).sum()

    eps = 1e-6
    i = (1, 2, 10, 3)
    for t, grad in ((q, dq), (k, dk), (v, dv)):
        plus, minus = t.detach().clone(), t.detach().clone()
        plus[i] += eps
        minus[i] -= eps
        args = lambda x, t=t: [x if s is t else s.detach() for s in (q, k, v)]  # noqa: E731
        num = (f(*args(plus)) - f(*args(minus))) / (2 * eps)
        assert abs(num.item() - grad[i].item()) < 1e-6
    zero = sdpa(q, k, v, dropout_p=1.0)
    assert torch.all(zero == 0)


def test_bad_inputs():
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    with pytest.raises(RuntimeError, match="Explicit attn_mask should not be set"):
        sdpa(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.bool), is_causal=True)
    with pytest.raises(RuntimeError):
        sdpa(q, k[..., :5], v)  # head dims differ
    with pytest.raises(RuntimeError):
        sdpa(q, k, v, attn_mask=torch.ones(3, 4, dtype=torch.bool))  # does not broadcast
    with pytest.raises(RuntimeError, match="attn_mask dtype"):
        sdpa(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="same dtype"):
        sdpa(q, k, v.double())
    with pytest.raises(RuntimeError, match="must divide"):
        sdpa(torch.randn(1, 3, 4, 8), k, v, enable_gqa=True)
    with pytest.raises(RuntimeError):
        sdpa(torch.randn(1, 3, 4, 8), k, v)  # heads differ without enable_gqa
    with pytest.raises(RuntimeError, match="dropout probability"):
        sdpa(q, k, v, dropout_p=1.5)
    with pytest.raises(RuntimeError, match="at least 2 dimensional"):
        sdpa(q[0, 0, 0], k, v)
    with pytest.raises(RuntimeError):
        sdpa(q.int(), k.int(), v.int())


def test_opcheck_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 11, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 1, 9, 11, generator=g) > 0.2
    op = torch.ops.bigmodel_native.sdpa_flash
    for args in [(q, k, v, None, 0.3, True, 0.0, 0), (q, k, v, mask, 0.5, False, 0.25, 123)]:
        torch.library.opcheck(op, args)
        gfn = lambda q_, k_, v_, a=args: op(q_, k_, v_, *a[3:])[0]  # noqa: E731
        assert torch.autograd.gradcheck(gfn, (q, k, v))
    out, lse = op(q, k, v, None, 0.3, False, 0.0, 0)
    bwd_args = (
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
    torch.library.opcheck(torch.ops.bigmodel_native.sdpa_flash_backward, bwd_args)
    assert torch.autograd.gradcheck(lambda a, b, c: sdpa(a, b, c, is_causal=True), (q[:, :2], k, v))


@pytest.mark.parametrize(
    "mask_shape",
    [(5, 7), (2, 1, 1, 7), (1, 4, 5, 7), (2, 4, 5, 7), (4, 1, 7), (1, 1, 5, 1)],
    ids=str,
)
@pytest.mark.parametrize("gqa", [False, True])
def test_float_mask_gradient_matches_torch(mask_shape, gqa):
    # A learned additive bias (relative positions, ALiBi slopes): its gradient is the scores'
    # gradient summed over the dimensions the mask broadcasts along.
    g = torch.Generator().manual_seed(0)
    hk = 2 if gqa else 4
    q = torch.randn(2, 4, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, hk, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, hk, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    m = torch.randn(mask_shape, generator=g, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    kw = {"attn_mask": m, "scale": 0.4, "enable_gqa": gqa}
    ours = torch.autograd.grad(sdpa(q, k, v, **kw), (q, k, v, m), gy)
    ref = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, **kw), (q, k, v, m), gy)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_float_mask_gradient_low_precision_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: sdpa(q, k, v, attn_mask=b), (bias,))
    # float32 queries with a float32 mask (a bf16 query would take a float32 or bf16 mask the same way).
    b32 = bias.detach().float().requires_grad_()
    (ours,) = torch.autograd.grad(sdpa(q.float(), k.float(), v.float(), attn_mask=b32).sum(), b32)
    (ref,) = torch.autograd.grad(
        F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=b32).sum(), b32
    )
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    out, lse = torch.ops.bigmodel_native.sdpa_flash(q, k, v, bias.detach()[None], 0.3, False, 0.0, 0)
    args = (torch.randn_like(out), q, k, v, out, lse, bias.detach()[None], 0.3, False, 0.0, 0)
    torch.library.opcheck(torch.ops.bigmodel_native.sdpa_flash_mask_backward, args)


def _mha_pair(**kw):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(**kw)
    ours = MultiheadAttention(**kw)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize(
    "kw",
    [
        dict(embed_dim=32, num_heads=4),
        dict(embed_dim=32, num_heads=4, batch_first=True, bias=False),
        dict(embed_dim=32, num_heads=2, kdim=12, vdim=20, add_bias_kv=True, add_zero_attn=True),
    ],
)
def test_multihead_attention(kw):
    ours, ref = _mha_pair(**kw)
    bf = kw.get("batch_first", False)
    shape = lambda n, e: (3, n, e) if bf else (n, 3, e)  # noqa: E731
    query = torch.randn(shape(7, 32))
    key = torch.randn(shape(11, kw.get("kdim", 32)))
    value = torch.randn(shape(11, kw.get("vdim", 32)))
    kpm = torch.zeros(3, 11, dtype=torch.bool)
    kpm[1, 8:] = True
    am = torch.rand(7, 11) > 0.9
    for args in [
        dict(),
        dict(key_padding_mask=kpm),
        dict(attn_mask=am),
        dict(attn_mask=am, key_padding_mask=kpm),
    ]:
        a, wa = ours(query, key, value, need_weights=False, **args)
        b, _ = ref(query, key, value, need_weights=False, **args)
        assert wa is None
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
        ga = torch.autograd.grad(a.sum(), list(ours.parameters()))
        gb = torch.autograd.grad(b.sum(), list(ref.parameters()))
        for x, y in zip(ga, gb, strict=True):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    a, wa = ours(query, key, value, average_attn_weights=False)
    b, wb = ref(query, key, value, average_attn_weights=False)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(wa, wb)


def test_multihead_attention_causal_hint_and_unbatched():
    ours, ref = _mha_pair(embed_dim=16, num_heads=2, batch_first=True)
    x = torch.randn(2, 9, 16)
    causal = torch.ones(9, 9, dtype=torch.bool).triu(1)
    a, _ = ours(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
    b, _ = ref(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    a, _ = ours(x[0], x[0], x[0], need_weights=False)
    b, _ = ref(x[0], x[0], x[0], need_weights=False)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(x, x, x, is_causal=True, need_weights=False)


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_every_isa_path(isa):
    from bigmodel_native import _native

    order = ["scalar", "avx2", "avx512"]
    if order.index(isa) > order.index(_native.detected_isa()):
        pytest.skip(f"CPU lacks {isa}")
    _native.set_isa(isa)
    try:
        _compare((1, 2, 70, 24), (1, 2, 600, 24), (1, 2, 600, 24))
        _compare((1, 2, 130, 24), (1, 2, 130, 24), (1, 2, 130, 24), is_causal=True)
        _compare((1, 2, 33, 16), (1, 2, 47, 16), (1, 2, 47, 16), dtype=torch.bfloat16)
    finally:
        _native.set_isa(None)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 21, 3, 8, generator=g).transpose(1, 2).requires_grad_()
    kv = torch.randn(2, 3, 8, 30, generator=g).transpose(-1, -2)
    out = sdpa(q, kv, kv, is_causal=True)
    ref = F.scaled_dot_product_attention(q, kv, kv, is_causal=True)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    (ga,) = torch.autograd.grad(out.sum(), q)
    (gb,) = torch.autograd.grad(ref.sum(), q)
    torch.testing.assert_close(ga, gb, atol=2e-5, rtol=2e-5)
