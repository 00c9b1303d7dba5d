"""bigmodel_native.ops.max_pool2d and nn.MaxPool2d against torch: values, indices and gradients over
a grid of options, NaN and -inf, dtypes, bad inputs with torch's error classes and messages, opcheck,
gradcheck, double backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native import nn as bnn
from bigmodel_native import set_num_threads
from bigmodel_native.ops import max_pool2d

# (input shape, kwargs): the 2x2 fast path, ceil_mode's partial windows, padding, dilation,
# overlapping windows (stride < kernel), stride > kernel, rectangular everything.
GRID = [
    ((2, 3, 8, 8), {"kernel_size": 2}),
    ((2, 3, 7, 9), {"kernel_size": 2}),  # odd sizes: the last row / column dropped
    ((2, 3, 7, 9), {"kernel_size": 2, "ceil_mode": True}),  # ... or a partial window kept
    ((2, 2, 9, 9), {"kernel_size": 3, "stride": 1, "padding": 1}),  # overlapping windows
    ((1, 2, 10, 11), {"kernel_size": (3, 2), "stride": (2, 3), "padding": (1, 0), "dilation": (2, 3)}),
    ((2, 2, 11, 10), {"kernel_size": 2, "stride": 3}),  # stride > kernel: gaps
    ((1, 3, 5, 5), {"kernel_size": 5, "padding": 2, "ceil_mode": True}),
    ((3, 1, 6, 4), {"kernel_size": 1, "stride": 2}),
    ((64, 32, 26, 26), {"kernel_size": 2}),  # the seed CNN's first pooling (several tasks)
]


def _ids(row) -> str:
    return f"{row[0]}-{row[1]}"


def _pair(shape, kw, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Integers on a small range: ties inside windows are common, so the tie-breaking (first
    # strict maximum) is exercised, not only the values.
    x = torch.randint(-4, 5, shape, generator=g).to(dtype)
    return x.clone().requires_grad_(), x.clone().requires_grad_()


@pytest.mark.parametrize("row", GRID, ids=_ids)
def test_matches_torch(row) -> None:
    shape, kw = row
    ours_x, ref_x = _pair(shape, kw)
    out, idx = max_pool2d(ours_x, **kw, return_indices=True)
    ref, ref_idx = F.max_pool2d(ref_x, **kw, return_indices=True)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)
    assert torch.equal(idx, ref_idx)
    gy = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad(out, ours_x, gy)
    (ref_g,) = torch.autograd.grad(ref, ref_x, gy)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_dtypes(dtype) -> None:
    ours_x, ref_x = _pair((2, 3, 9, 8), {}, dtype=dtype)
    ours_x = (ours_x.detach() * 0.37).requires_grad_()
    ref_x = (ref_x.detach() * 0.37).requires_grad_()
    out, ref = max_pool2d(ours_x, 3, 2, 1), F.max_pool2d(ref_x, 3, 2, 1)
    assert out.dtype == dtype and torch.equal(out, ref)
    gy = torch.ones_like(ref)
    assert torch.equal(torch.autograd.grad(out, ours_x, gy)[0], torch.autograd.grad(ref, ref_x, gy)[0])


def test_nan_and_inf_follow_torch() -> None:
    x = torch.tensor([[[[1.0, float("nan"), 2.0, 3.0], [float("nan"), 0.0, -float("inf"), -float("inf")]]]])
    out, idx = max_pool2d(x, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.nan_to_num(), ref.nan_to_num())
    assert torch.equal(idx, ref_idx)
    all_neg_inf = torch.full((1, 1, 4, 4), -float("inf"))
    assert torch.equal(
        max_pool2d(all_neg_inf, 2, return_indices=True)[1],
        F.max_pool2d(all_neg_inf, 2, return_indices=True)[1],
    )


def test_unbatched_channels_last_and_empty_batch() -> None:
    x = torch.randn(3, 8, 10)
    assert torch.equal(max_pool2d(x, 2), F.max_pool2d(x, 2))
    y = torch.randn(2, 3, 8, 10).to(memory_format=torch.channels_last)
    assert torch.equal(max_pool2d(y, 3, 1, 1), F.max_pool2d(y, 3, 1, 1))
    e = torch.randn(0, 3, 8, 8)
    assert max_pool2d(e, 2).shape == F.max_pool2d(e, 2).shape == (0, 3, 4, 4)


def test_one_thread_matches_two() -> None:
    x = torch.randn(16, 8, 12, 12)
    two = max_pool2d(x, 3, 2, 1, return_indices=True)
    set_num_threads(1)
    try:
        one = max_pool2d(x, 3, 2, 1, return_indices=True)
    finally:
        set_num_threads(None)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


BAD = [
    ((8, 8), {"kernel_size": 2}),
    ((1, 2, 3, 8, 8), {"kernel_size": 2}),
    ((2, 0, 8, 8), {"kernel_size": 2}),
    ((0, 8, 8), {"kernel_size": 2}),
    ((2, 3, 8, 8), {"kernel_size": 0}),
    ((2, 3, 8, 8), {"kernel_size": (2, 2, 2)}),
    ((2, 3, 8, 8), {"kernel_size": 2, "stride": 0}),
    ((2, 3, 8, 8), {"kernel_size": 2, "stride": (1, 1, 1)}),
    ((2, 3, 8, 8), {"kernel_size": 2, "padding": 2}),
    ((2, 3, 8, 8), {"kernel_size": 2, "padding": -1}),
    ((2, 3, 8, 8), {"kernel_size": 2, "padding": (1, 1, 1)}),
    ((2, 3, 8, 8), {"kernel_size": 2, "dilation": 0}),
    ((2, 3, 8, 8), {"kernel_size": 2, "dilation": (1, 1, 1)}),
    ((2, 3, 2, 2), {"kernel_size": 3}),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: f"{c[0]}-{c[1]}")
def test_bad_inputs_raise_torchs_error(case) -> None:
    shape, kw = case
    x = torch.randn(shape)
    with pytest.raises(Exception) as want:
        F.max_pool2d(x, **kw)
    with pytest.raises(type(want.value)) as got:
        max_pool2d(x, **kw)
    assert str(got.value).splitlines()[0] == str(want.value).splitlines()[0]


def test_unsupported_dtype_and_corrupt_indices_are_refused() -> None:
    with pytest.raises(NotImplementedError, match="unsupported dtype"):
        max_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2)
    x = torch.randn(1, 2, 4, 4)
    _, idx = max_pool2d(x, 2, return_indices=True)
    bad = idx.clone()
    bad[0, 1, 0, 0] = 16  # one past the plane: the kernel must refuse, not write out of bounds
    grad = torch.ones(1, 2, 2, 2)
    with pytest.raises(IndexError, match="outside a plane"):
        torch.ops.bigmodel_native.max_pool2d_backward(grad, x, bad, [2, 2], [2, 2], [0, 0], [1, 1], False)


@pytest.mark.parametrize(
    "args",
    [([2, 2], [2, 2], [0, 0], [1, 1], False), ([3, 2], [1, 2], [1, 1], [2, 1], True)],
)
def test_opcheck(args) -> None:
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.bigmodel_native.max_pool2d, (x, *args))
    out, idx = torch.ops.bigmodel_native.max_pool2d(x, *args)
    torch.library.opcheck(
        torch.ops.bigmodel_native.max_pool2d_backward, (torch.randn_like(out), x.detach(), idx, *args)
    )


def test_gradcheck_float64() -> None:
    # Distinct values: max pooling is differentiable away from ties.
    x = torch.randperm(2 * 2 * 7 * 6, dtype=torch.float64).reshape(2, 2, 7, 6).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: max_pool2d(x, 3, 2, 1, ceil_mode=True), (x,))


def test_double_backward_raises_a_clear_error() -> None:
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(max_pool2d(x, 2).sum() * 1.0, x, create_graph=True)
    (g2,) = torch.autograd.grad((max_pool2d(x, 2) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        g2.sum().backward()
    assert g is not None


def test_module_is_a_drop_in() -> None:
    ours = bnn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True, return_indices=True)
    ref = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True, return_indices=True)
    assert isinstance(ours, torch.nn.MaxPool2d) and repr(ours) == repr(ref)
    x = torch.randn(2, 3, 9, 9)
    assert all(torch.equal(a, b) for a, b in zip(ours(x), ref(x), strict=True))


def test_other_devices_are_refused_by_the_op_and_delegated_by_the_module() -> None:
    # The kernel is CPU-only. The functional op says so; the module (which the seed CNNs use, also
    # on CUDA) runs torch's pooling there. The meta device stands in for CUDA on this machine.
    x = torch.randn(2, 3, 8, 8, device="meta")
    with pytest.raises(NotImplementedError, match="runs on CPU tensors"):
        max_pool2d(x, 2)
    assert bnn.MaxPool2d(2)(x).shape == (2, 3, 4, 4)
