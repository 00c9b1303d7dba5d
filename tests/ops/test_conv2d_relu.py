"""bigmodel_native.ops.conv2d_relu: exactly relu(conv2d) forward and backward, in one kernel call.

The fused op must give the same bits as our conv2d followed by torch.relu (the same products on
the same numbers; the ReLU and its mask applied inside the kernel), match torch's
relu(F.conv2d) within the usual tolerances, keep torch's ReLU edge cases (-0.0 and NaN pass,
the gradient is cut where the output is <= 0), and pass opcheck and gradcheck.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native.ops import conv2d, conv2d_relu, conv2d_relu_max_pool2d, max_pool2d

from .test_conv2d import GRID, _ids, _inputs

OPS = torch.ops.bigmodel_native


def _grads(fn, xs, ws, kw, dtype, bias):
    x, w, b = _inputs(xs, ws, dtype, bias)
    y = fn(x, w, b, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    params = (x, w) if b is None else (x, w, b)
    return (y.detach(), *torch.autograd.grad(y, params, gy))


def _unfused(x, w, b, **kw):
    return torch.relu(conv2d(x, w, b, **kw))


def _unfused_pool(x, w, b, **kw):
    return max_pool2d(conv2d_relu(x, w, b, **kw), 2)


def _torch_pool(x, w, b, **kw):
    return F.max_pool2d(torch.relu(F.conv2d(x, w, b, **kw)), 2)


@pytest.mark.parametrize("row", GRID, ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pooled", [False, True], ids=["relu", "relu+pool"])
def test_same_bits_as_the_unfused_ops(row, dtype, pooled) -> None:
    # conv2d_relu against our conv2d then torch.relu; conv2d_relu_max_pool2d against
    # conv2d_relu then our max_pool2d.
    xs, ws, kw = row
    fused_fn, plain_fn = (conv2d_relu_max_pool2d, _unfused_pool) if pooled else (conv2d_relu, _unfused)
    fused = _grads(fused_fn, xs, ws, kw, dtype, bias=True)
    plain = _grads(plain_fn, xs, ws, kw, dtype, bias=True)
    assert torch.equal(fused[0], plain[0])
    conv_size = conv2d(*_inputs(xs, ws, dtype)[:2], **kw).shape[-2:]
    for got, want in zip(fused[1:], plain[1:], strict=True):
        if pooled and any(n % 2 for n in conv_size):
            # The pooled backward never forms an odd output's last row or column (no window
            # reads them): the same sums less their zero terms, in another order.
            torch.testing.assert_close(got, want)
        else:
            assert torch.equal(got, want)
    if not pooled:
        assert (fused[0] == 0).any() and (fused[0] > 0).any()  # the mask did cut somewhere


@pytest.mark.parametrize("row", GRID[:6], ids=_ids)
def test_matches_torch(row) -> None:
    xs, ws, kw = row
    ours = _grads(conv2d_relu, xs, ws, kw, torch.float64, bias=False)
    ref = _grads(lambda x, w, b, **k: torch.relu(F.conv2d(x, w, b, **k)), xs, ws, kw, torch.float64, False)
    for got, want in zip(ours, ref, strict=True):
        torch.testing.assert_close(got, want)


def test_relu_edge_cases_are_torchs() -> None:
    # A 1x1 identity convolution puts chosen values through the ReLU: signs of zeros and NaN come
    # out as from torch.relu(F.conv2d(...)) (the product turns -0.0 into +0.0, in torch too), and
    # the gradient is zero exactly where threshold_backward makes it zero.
    v = torch.tensor([-0.0, 0.0, float("nan"), -1.0, 2.0, float("inf"), -float("inf"), 1e-30])
    x = v.reshape(1, 1, 1, -1).clone().requires_grad_()
    w = torch.ones(1, 1, 1, 1)
    y = conv2d_relu(x, w)
    want = torch.relu(F.conv2d(x.detach(), w))
    assert torch.equal(torch.signbit(y), torch.signbit(want))
    torch.testing.assert_close(y.detach(), want, equal_nan=True)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert gx.flatten().tolist() == [0, 0, 1, 0, 1, 1, 0, 1]


def test_unbatched_and_no_grad() -> None:
    x, w, b = _inputs((3, 9, 9), (5, 3, 3, 3), torch.float32)
    with torch.no_grad():
        assert torch.equal(conv2d_relu(x, w, b, padding=1), torch.relu(conv2d(x, w, b, padding=1)))
    assert conv2d_relu(x, w, b).shape == (5, 7, 7)


def test_opcheck_and_gradcheck() -> None:
    x, w, b = _inputs((2, 3, 7, 7), (4, 3, 3, 3), torch.float32)
    conf = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    torch.library.opcheck(OPS.conv2d_relu, (x, w, b, *conf))
    y = OPS.conv2d_relu(x.detach(), w.detach(), b.detach(), *conf)
    torch.library.opcheck(
        OPS.conv2d_relu_backward, (torch.randn_like(y), y, x.detach(), w.detach(), *conf, [True, True, True])
    )
    x, w, b = _inputs((2, 4, 6, 5), (4, 2, 3, 2), torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv2d_relu(x, w, b, stride=2, padding=1, groups=2), (x, w, b)
    )


def test_bad_inputs() -> None:
    x, w, b = _inputs((2, 3, 7, 7), (4, 3, 3, 3), torch.float32)
    with pytest.raises(RuntimeError):  # torch's checks, as conv2d's
        conv2d_relu(x, w[:, :2], b)
    y = OPS.conv2d_relu(x.detach(), w.detach(), b.detach(), [1, 1], [0] * 4, [1, 1], 1)
    with pytest.raises(RuntimeError, match="output of size"):
        OPS.conv2d_relu_backward(y, y[:1], x.detach(), w.detach(), [1, 1], [0] * 4, [1, 1], 1, [True] * 3)
    if torch.cuda.is_available():
        with pytest.raises(NotImplementedError, match="CPU tensors"):
            conv2d_relu(x.cuda(), w.cuda())
    with pytest.raises(NotImplementedError, match="CPU tensors"):
        conv2d_relu(x.to("meta"), w.to("meta"))


def test_torch_compile_fullgraph() -> None:
    x, w, b = _inputs((2, 3, 7, 7), (4, 3, 3, 3), torch.float32)
    fn = torch.compile(lambda x, w, b: conv2d_relu(x, w, b, padding=1), backend="aot_eager", fullgraph=True)
    got = fn(x, w, b)
    assert torch.equal(got, conv2d_relu(x, w, b, padding=1))
    torch.testing.assert_close(
        torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(_unfused(x, w, b, padding=1).sum(), x)[0]
    )


# ----------------------------------------------------------------------------- + max_pool2d(2)


@pytest.mark.parametrize("row", GRID[:6], ids=_ids)
def test_pooled_matches_torch(row) -> None:
    xs, ws, kw = row
    ours = _grads(conv2d_relu_max_pool2d, xs, ws, kw, torch.float64, bias=True)
    ref = _grads(_torch_pool, xs, ws, kw, torch.float64, True)
    for got, want in zip(ours, ref, strict=True):
        torch.testing.assert_close(got, want)


def test_pooled_opcheck_gradcheck_and_bad_indices() -> None:
    x, w, b = _inputs((2, 3, 9, 8), (4, 3, 3, 3), torch.float32)
    conf = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    torch.library.opcheck(OPS.conv2d_relu_max_pool2d, (x, w, b, *conf))
    y, ix = OPS.conv2d_relu_max_pool2d(x.detach(), w.detach(), b.detach(), *conf)
    assert y.shape == ix.shape == (2, 4, 4, 4) and ix.dtype == torch.int64
    assert torch.equal(ix == -1, y <= 0)  # -1: the ReLU stops that window's gradient
    args = (x.detach(), w.detach(), *conf, [True, True, True])
    torch.library.opcheck(OPS.conv2d_relu_max_pool2d_backward, (torch.randn_like(y), ix, *args))
    bad = ix.clone()
    bad[0, 0, 0, 0] = 9 * 8  # past the 9x8 plane
    with pytest.raises(IndexError, match="outside a plane"):
        OPS.conv2d_relu_max_pool2d_backward(torch.ones_like(y), bad, *args)
    bad[0, 0, 0, 0] = 2  # inside the plane, in the next window
    with pytest.raises(IndexError, match="outside its 2x2 window"):
        OPS.conv2d_relu_max_pool2d_backward(torch.ones_like(y), bad, *args)
    with pytest.raises(RuntimeError, match="indices"):
        OPS.conv2d_relu_max_pool2d_backward(torch.ones_like(y), ix.int(), *args)
    x, w, b = _inputs((2, 4, 7, 6), (4, 2, 3, 2), torch.float64)
    fn = lambda x, w, b: conv2d_relu_max_pool2d(x, w, b, padding=1, groups=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    with pytest.raises(NotImplementedError, match="CPU tensors"):
        conv2d_relu_max_pool2d(x.to("meta"), w.to("meta"))
    unbatched = conv2d_relu_max_pool2d(x[0], w, b, padding=1, groups=2)
    assert torch.equal(unbatched, fn(x, w, b)[0])


def test_pooled_output_is_not_saved_so_in_place_changes_are_allowed() -> None:
    # As with torch's max_pool2d (which saves its input and indices), changing the pooled output
    # in place before the backward is fine: only the indices are kept.
    x, w, b = _inputs((2, 3, 8, 8), (4, 3, 3, 3), torch.float64)
    y = conv2d_relu_max_pool2d(x, w, b)
    want = torch.autograd.grad(_unfused_pool(x, w, b).sum(), (x, w, b))
    y.add_(1)
    assert all(torch.equal(g, h) for g, h in zip(torch.autograd.grad(y.sum(), (x, w, b)), want, strict=True))


def test_pooled_output_smaller_than_a_window_raises_torchs_error() -> None:
    x, w, b = _inputs((1, 1, 3, 4), (2, 1, 3, 3), torch.float32)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        F.max_pool2d(torch.relu(F.conv2d(x, w, b)), 2)
    with pytest.raises(RuntimeError, match=r"Given input size: \(2x1x2\). Calculated output size: \(2x0x1\)"):
        conv2d_relu_max_pool2d(x, w, b)


def test_float16_keeps_torchs_negative_zero() -> None:
    # A tiny negative result rounds to -0.0 in float16, which torch.relu keeps: round, then clamp.
    x = torch.full((1, 1, 2, 2), 1e-4, dtype=torch.float16)
    w = torch.full((1, 1, 1, 1), -1e-4, dtype=torch.float16)
    want = torch.relu(conv2d(x, w))
    assert torch.signbit(want).all()
    assert torch.equal(torch.signbit(conv2d_relu(x, w)), torch.signbit(want))
    x4 = torch.full((1, 1, 4, 4), 1e-4, dtype=torch.float16)
    pooled = conv2d_relu_max_pool2d(x4, w)
    assert torch.signbit(pooled).all() and torch.equal(pooled, max_pool2d(torch.relu(conv2d(x4, w)), 2))


# Many input channels (>= 16): the pooled backward walks the window maxima alone, channels-last.
MANY_CHANNELS = [
    ((3, 32, 13, 13), (64, 32, 3, 3), {}),  # the seed CNN's second layer
    ((2, 20, 9, 8), (6, 20, 3, 3), {"padding": (1, 0), "stride": (1, 2)}),
    ((2, 17, 11, 10), (5, 17, 2, 3), {"dilation": 2, "padding": 2}),
]


@pytest.mark.parametrize("row", MANY_CHANNELS, ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_pooled_many_channels_matches_torch_and_the_unfused_ops(row, dtype) -> None:
    xs, ws, kw = row
    ours = _grads(conv2d_relu_max_pool2d, xs, ws, kw, dtype, bias=True)
    plain = _grads(_unfused_pool, xs, ws, kw, dtype, bias=True)
    ref = _grads(_torch_pool, xs, ws, kw, torch.float64, True)
    assert torch.equal(ours[0], plain[0])
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
    for got, unfused, want in zip(ours, plain, ref, strict=True):
        # The same sums as the dense backward less its zero terms, in another order.
        torch.testing.assert_close(got, unfused, **tol)
        if dtype != torch.bfloat16:  # (bf16 rounding moves maxima and ReLU cuts of the f64 run)
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_pooled_many_channels_gradcheck_and_bad_indices() -> None:
    x, w, b = _inputs((2, 16, 6, 5), (3, 16, 3, 2), torch.float64)
    fn = lambda x, w, b: conv2d_relu_max_pool2d(x, w, b, padding=1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    conf = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    y, ix = OPS.conv2d_relu_max_pool2d(x.detach(), w.detach(), b.detach(), *conf)
    args = (x.detach(), w.detach(), *conf, [True, True, True])
    torch.library.opcheck(OPS.conv2d_relu_max_pool2d_backward, (torch.randn_like(y), ix, *args))
    plane = 6 * 6  # the 6x6 convolution output the indices refer to
    bad = ix.clone()
    bad[1, 2, 0, 1] = plane
    with pytest.raises(IndexError, match="outside a plane"):
        OPS.conv2d_relu_max_pool2d_backward(torch.ones_like(y), bad, *args)
    bad[1, 2, 0, 1] = 0  # inside the plane, in the first window rather than the second
    with pytest.raises(IndexError, match="outside its 2x2 window"):
        OPS.conv2d_relu_max_pool2d_backward(torch.ones_like(y), bad, *args)


def test_pooled_many_channels_non_finite_input_gives_the_dense_nans() -> None:
    # 0 * inf is NaN: the dense backward (ours unfused, and torch's) multiplies the zero gradients
    # of non-maximum pixels too, so an infinite input spreads NaN into the weight gradient. The
    # entry-wise backward, which leaves those terms out, must step aside and give the same.
    x, w, b = _inputs((2, 16, 8, 8), (4, 16, 3, 3), torch.float32)
    x = x.detach().clone()
    x[1, 3, 0, 7] = float("inf")
    x.requires_grad_()
    gy = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    fused = torch.autograd.grad(conv2d_relu_max_pool2d(x, w, b), (x, w, b), gy)
    plain = torch.autograd.grad(_unfused_pool(x, w, b), (x, w, b), gy)
    assert fused[1].isnan().any()
    for got, want in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)
