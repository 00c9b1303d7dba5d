"""bigmodel_native.ops.conv2d and nn.Conv2d against torch: output and all three gradients over a grid
of shapes and options, bad inputs with torch's error classes, opcheck, gradcheck, double backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native import _native, set_num_threads
from bigmodel_native import nn as bnn
from bigmodel_native.ops import conv2d, conv2d_relu_max_pool2d

from ..conftest import available_isas

# (input shape, weight shape, kwargs): each row hits a different branch of the kernel's plan
# (blocked small images, one image per GEMM, pointwise, grouped, strided, dilated, padded).
GRID = [
    ((4, 3, 9, 9), (5, 3, 3, 3), {}),
    ((3, 4, 6, 7), (6, 4, 1, 1), {}),  # 1x1: the input is its own column matrix
    ((2, 4, 6, 7), (6, 4, 1, 1), {"stride": 2}),
    ((2, 3, 11, 10), (4, 3, 2, 2), {"stride": 3}),  # stride > kernel
    ((2, 2, 7, 8), (3, 2, 3, 3), {"padding": (1, 2)}),  # asymmetric padding
    ((2, 2, 7, 8), (3, 2, 3, 2), {"padding": "same"}),  # even kernel width: far side padded more
    ((2, 2, 9, 9), (3, 2, 2, 3), {"padding": "same", "dilation": (1, 2)}),
    ((2, 2, 7, 8), (3, 2, 3, 3), {"padding": "valid"}),
    ((2, 3, 12, 11), (4, 3, 3, 3), {"dilation": (2, 3), "padding": 2}),
    ((2, 6, 8, 8), (6, 1, 3, 3), {"groups": 6, "padding": 1}),  # depthwise
    ((2, 6, 8, 8), (9, 2, 3, 3), {"groups": 3, "stride": (2, 1)}),
    ((70, 2, 5, 5), (4, 2, 3, 3), {}),  # many small images blocked into one GEMM
    ((1, 8, 20, 20), (16, 8, 3, 3), {"padding": 1}),  # batch 1: the GEMM itself is parallel
    ((5, 1, 28, 28), (8, 1, 3, 3), {}),  # first layer of the seed CNN
]


def _ids(row) -> str:
    return f"{row[0]}-{row[1]}-{row[2]}"


def _inputs(xs, ws, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xs, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(ws, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(ws[0], generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    return x, w, b


def _both(xs, ws, kw, dtype, bias=True):
    """(ours, torch) as (output, grad_input, grad_weight, grad_bias) with one shared grad_output."""
    out = []
    for fn in (conv2d, F.conv2d):
        x, w, b = _inputs(xs, ws, dtype, bias)
        y = fn(x, w, b, **kw)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        y.backward(gy)
        out.append((y.detach(), x.grad, w.grad, None if b is None else b.grad))
    return out


@pytest.mark.parametrize("row", GRID, ids=_ids)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_float64(row, bias) -> None:
    ours, ref = _both(*row, torch.float64, bias)
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref, strict=True):
        if r is None:
            assert a is None
            continue
        assert a.shape == r.shape, name
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("row", GRID[::2], ids=_ids)
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)], ids=str
)
def test_matches_torch_low_precision(row, dtype, tol) -> None:
    ours, ref = _both(*row, dtype)
    # The reference in float64 of the same rounded inputs; both results must sit close to it.
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref, strict=True):
        assert a.dtype == dtype, name
        scale = r.double().abs().max().item() + 1.0
        err = (a.double() - r.double()).abs().max().item()
        assert err <= tol * scale * (1 + row[1][1] * row[1][2] * row[1][3] / 8), f"{name}: {err} vs {scale}"


# Layers whose f32 kernels differ by instruction set: col2im by input rows in registers (unit
# horizontal stride, with and without padding, vertical stride and dilation), tiny planes by lane
# permutes (5x5 images), and the pooled backward from window maxima (16+ input channels).
ISA_GRID = [
    ((3, 8, 15, 15), (6, 8, 3, 3), {}),
    ((2, 4, 13, 13), (5, 4, 3, 3), {"padding": 1}),
    ((2, 3, 20, 19), (4, 3, 3, 3), {"stride": (2, 1), "dilation": (1, 2)}),
    ((20, 4, 5, 5), (3, 4, 3, 3), {}),
]


@pytest.mark.parametrize("isa", available_isas())
def test_every_instruction_set(isa) -> None:
    _native.set_isa(isa)
    for xs, ws, kw in ISA_GRID:
        ours, ref = _both(xs, ws, kw, torch.float32)
        for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref, strict=True):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4, msg=f"{isa} {xs} {name}")
    x, w, b = _inputs((3, 16, 12, 12), (8, 16, 3, 3), torch.float32)
    got = torch.autograd.grad(conv2d_relu_max_pool2d(x, w, b).sum(), (x, w, b))
    want = torch.autograd.grad(F.max_pool2d(F.relu(F.conv2d(x, w, b)), 2).sum(), (x, w, b))
    for name, a, r in zip(("grad_input", "grad_weight", "grad_bias"), got, want, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4, msg=f"{isa} pooled {name}")


def test_unbatched_input() -> None:
    x, w, b = _inputs((3, 8, 9), (4, 3, 3, 3), torch.float64)
    y = conv2d(x, w, b, padding=1)
    assert y.shape == (4, 8, 9)
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1))
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_non_contiguous_and_channels_last_inputs() -> None:
    x, w, b = _inputs((2, 3, 10, 12), (4, 3, 3, 3), torch.float64)
    xs = x.detach()[:, :, ::2, 1:]  # strided view
    xc = x.detach().to(memory_format=torch.channels_last)
    for t in (xs, xc):
        torch.testing.assert_close(conv2d(t, w, b), F.conv2d(t, w, b))


def test_one_thread_and_empty_batch() -> None:
    set_num_threads(1)
    try:
        ours, ref = _both(*GRID[0], torch.float64)
        torch.testing.assert_close(ours[2], ref[2])
    finally:
        set_num_threads(None)
    x, w, b = _inputs((0, 3, 5, 5), (4, 3, 3, 3), torch.float64)
    y = conv2d(x, w, b)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


BAD = {
    "channels": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 3, 3, 3)),
    "groups do not divide out": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(5, 2, 3, 3), groups=2),
    "groups 0": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), groups=0),
    "kernel too big": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 9, 9)),
    "stride 0": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), stride=0),
    "negative stride": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), stride=-1),
    "dilation 0": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), dilation=0),
    "negative padding": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), padding=-1),
    "2-d input": lambda f: f(torch.randn(8, 8), torch.randn(6, 4, 3, 3)),
    "5-d input": lambda f: f(torch.randn(1, 2, 4, 8, 8), torch.randn(6, 4, 3, 3)),
    "3-d weight": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3)),
    "dtype mismatch": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3, dtype=torch.float64)),
    "bias dtype": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6).double()),
    "bias shape": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(5)),
    "same with stride": lambda f: f(
        torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), padding="same", stride=2
    ),
    "unknown padding": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), padding="full"),
    "three strides": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), stride=(1, 1, 1)),
    "empty weight": lambda f: f(torch.randn(2, 4, 8, 8), torch.randn(0, 4, 3, 3)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_torchs_error_class(case) -> None:
    with pytest.raises(Exception) as want:
        BAD[case](F.conv2d)
    with pytest.raises(want.type) as got:
        BAD[case](conv2d)
    if case not in ("3-d weight", "dtype mismatch", "bias dtype"):
        # Same wording as torch (up to torch's own prefix).
        assert str(got.value).splitlines()[0] in str(want.value), (got.value, want.value)


def test_unsupported_dtype_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unsupported dtype torch.int64"):
        conv2d(torch.ones(1, 1, 4, 4, dtype=torch.long), torch.ones(1, 1, 3, 3, dtype=torch.long))


OPCHECK = [
    ((2, 3, 7, 7), (4, 3, 3, 3), True, [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ((2, 4, 9, 8), (4, 2, 2, 3), False, [2, 1], [0, 1, 2, 0], [1, 2], 2),
    ((1, 3, 5, 5), (3, 1, 1, 1), True, [1, 1], [0, 0, 0, 0], [1, 1], 3),
]


@pytest.mark.parametrize("args", OPCHECK)
def test_opcheck(args) -> None:
    xs, ws, bias, stride, padding, dilation, groups = args
    x, w, b = _inputs(xs, ws, torch.float32, bias)
    torch.library.opcheck(torch.ops.bigmodel_native.conv2d, (x, w, b, stride, padding, dilation, groups))
    gy = torch.randn(
        F.conv2d(
            F.pad(x, (padding[2], padding[3], padding[0], padding[1])), w, None, stride, 0, dilation, groups
        ).shape
    )  # noqa: E501
    torch.library.opcheck(
        torch.ops.bigmodel_native.conv2d_backward,
        (gy, x.detach(), w.detach(), stride, padding, dilation, groups, [True, True, bias]),
    )


@pytest.mark.parametrize(
    "kw", [{"padding": 1}, {"stride": 2, "dilation": 2}, {"groups": 2, "padding": "same"}], ids=str
)
def test_gradcheck_float64(kw) -> None:
    x, w, b = _inputs((2, 4, 6, 5), (4, 4 // kw.get("groups", 1), 3, 2), torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b, **kw), (x, w, b))


def test_double_backward_raises_a_clear_error() -> None:
    x, w, b = _inputs((2, 2, 5, 5), (3, 2, 3, 3), torch.float64)
    (gx,) = torch.autograd.grad(conv2d(x, w, b).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.sum().backward()


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_module_is_a_drop_in(mode) -> None:
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, dtype=torch.float64)
    ours = bnn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, dtype=torch.float64)
    assert isinstance(ours, torch.nn.Conv2d)
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    y1, y2 = ref(x), ours(x)
    torch.testing.assert_close(y2, y1)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
