"""bigmodel_native.ops.cross_entropy / nn.CrossEntropyLoss against torch's.

Forward values and the gradients of the input (and of probability targets) are compared with
torch over shapes (C = 1, N = 0, a long row split across threads, 1-d input, K-dim layouts),
dtypes and every option combination; then bad inputs (same exception class and message as
torch), checks the Python layer cannot skip, opcheck, gradcheck in float64 and the in-place mode.
"""

from __future__ import annotations

import itertools
import sys

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native import _native
from bigmodel_native.nn import CrossEntropyLoss
from bigmodel_native.ops import cross_entropy, cross_entropy_inplace_backward

from ..conftest import available_isas

CE = sys.modules["bigmodel_native.ops.cross_entropy"]
OPS = torch.ops.bigmodel_native

SHAPES = {
    "NC": (9, 5),
    "C=1": (4, 1),
    "N=0": (0, 6),
    "1d": (7,),
    "long rows": (2, 40_000),  # few rows, many columns: the column-split path
    "NCd": (2, 7, 3, 4),
    "NCd long": (1, 6, 6000),  # few samples, long inner dim: the backward's segment split
    "NCd small": (5, 3, 2),
}
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
OPTIONS = [
    dict(reduction=r, weighted=w, ignore_index=i, label_smoothing=ls)
    for r, w, i, ls in itertools.product(["mean", "sum", "none"], [False, True], [-100, 1], [0.0, 0.25])
]


def _tol(dtype: torch.dtype) -> dict:
    return {
        torch.float32: dict(rtol=2e-5, atol=1e-5),
        torch.float64: dict(rtol=1e-10, atol=1e-12),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    }[dtype]


def _inputs(shape: tuple, dtype: torch.dtype, prob: bool, ignore_index: int):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    classes = shape[0] if len(shape) == 1 else shape[1]
    if prob:
        t = torch.softmax(torch.randn(shape, dtype=torch.float64), dim=0 if len(shape) == 1 else 1).to(dtype)
        return x, t
    tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = torch.randint(0, classes, tshape)
    if ignore_index >= 0 and t.numel() > 0 and ignore_index < classes:
        t.view(-1)[::3] = ignore_index  # every third row ignored
    return x, t


def _compare(shape, dtype, prob, opt):
    x, t = _inputs(shape, dtype, prob, opt["ignore_index"])
    classes = shape[0] if len(shape) == 1 else shape[1]
    w = torch.rand(classes, dtype=torch.float64).to(dtype) + 0.5 if opt["weighted"] else None
    kw = dict(
        weight=w,
        ignore_index=opt["ignore_index"],
        reduction=opt["reduction"],
        label_smoothing=opt["label_smoothing"],
    )
    # The reference is torch in float64 on the same values: torch's own fp32 (and bf16, which
    # rounds its log-softmax to bf16) is less accurate than our fp32 accumulation at large C.
    ref_dtype = torch.float64
    xr, tr = x.to(ref_dtype).requires_grad_(), (t.to(ref_dtype) if prob else t)
    if prob:
        tr.requires_grad_()
    want = F.cross_entropy(xr, tr, **{**kw, "weight": None if w is None else w.to(ref_dtype)})
    xo = x.clone().requires_grad_()
    to = t.clone().requires_grad_() if prob else t
    got = cross_entropy(xo, to, **kw)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.to(ref_dtype), want.detach(), **_tol(dtype), equal_nan=True)
    g = torch.randn(want.shape, dtype=torch.float64)
    want_grads = torch.autograd.grad(want, [xr, tr] if prob else [xr], g.to(ref_dtype))
    got_grads = torch.autograd.grad(got, [xo, to] if prob else [xo], g.to(dtype))
    for a, b in zip(got_grads, want_grads, strict=True):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a.to(ref_dtype), b, **_tol(dtype), equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
def test_matches_torch(shape, dtype, prob):
    for opt in OPTIONS:
        if prob and opt["ignore_index"] >= 0:
            continue  # torch refuses ignore_index with probabilities (tested below)
        try:
            _compare(shape, dtype, prob, opt)
        except AssertionError as e:
            raise AssertionError(f"{opt}: {e}") from None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_written_by_the_forward(dtype, reduction):
    # Logits that need a gradient get it from the forward (for an upstream 1); the backward only
    # scales it. A second backward (retain_graph) recomputes the very same bits, other upstream
    # gradients scale it, and an in-place change of the logits after the forward is caught.
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(33, 300, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 300, (33,), generator=g)
    t[::4] = -100
    w = torch.rand(300, generator=g, dtype=torch.float64) + 0.5
    kw = dict(weight=w.to(dtype), reduction=reduction, label_smoothing=0.1)
    x = x64.to(dtype).requires_grad_()
    loss = cross_entropy(x, t, **kw)
    gy = torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5
    (g1,) = torch.autograd.grad(loss, x, gy.to(dtype), retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, gy.to(dtype), retain_graph=True)
    (g3,) = torch.autograd.grad(loss.sum(), x)
    assert torch.equal(g1, g2)
    xr = x.detach().to(torch.float64).requires_grad_()
    ref = F.cross_entropy(xr, t, **{**kw, "weight": w})
    (r1,) = torch.autograd.grad(ref, xr, gy, retain_graph=True)
    (r3,) = torch.autograd.grad(ref.sum(), xr)
    torch.testing.assert_close(g1.double(), r1, **_tol(dtype))
    torch.testing.assert_close(g3.double(), r3, **_tol(dtype))
    y = x * 1.0
    loss = cross_entropy(y, t, **kw)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(33, 300), (300,), (40, 7)], ids=str)
def test_gradient_written_by_the_forward_with_probability_targets(dtype, shape):
    # Probability targets that need no gradient take the same fused path as class indices.
    g = torch.Generator().manual_seed(4)
    dim = 0 if len(shape) == 1 else 1
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    t64 = torch.randn(shape, generator=g, dtype=torch.float64).softmax(dim)
    w = torch.rand(shape[dim], generator=g, dtype=torch.float64) + 0.5
    for kw in (dict(), dict(weight=w, label_smoothing=0.2, reduction="sum"), dict(reduction="none")):
        ours_kw = {**kw, "weight": w.to(dtype)} if "weight" in kw else kw
        x = x64.to(dtype).requires_grad_()
        loss = cross_entropy(x, t64.to(dtype), **ours_kw)
        gy = torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5
        (got,) = torch.autograd.grad(loss, x, gy.to(dtype))
        xr = x.detach().double().requires_grad_()
        (want,) = torch.autograd.grad(F.cross_entropy(xr, t64.to(dtype).double(), **kw), xr, gy)
        torch.testing.assert_close(got.double(), want, **_tol(dtype))


@pytest.mark.parametrize("shape", [(4, 5), (2, 5, 3)], ids=["fused", "K-dim"])
def test_create_graph_gives_the_gradient_and_refuses_a_second_derivative(shape):
    # The kernels have no second derivative: with create_graph=True the gradient is right, and
    # differentiating through it raises instead of silently missing the terms through the logits.
    w = torch.randn(5, 1, 1)[: shape[1]].reshape(-1, *[1] * (len(shape) - 2)) + 2
    w = w.double().requires_grad_()
    x = torch.randn(shape, dtype=torch.float64) * w
    t = torch.randint(0, 5, (shape[0], *shape[2:]))
    (gx,) = torch.autograd.grad(cross_entropy(x, t), x, create_graph=True)
    (want,) = torch.autograd.grad(F.cross_entropy(x, t), x, retain_graph=True)
    torch.testing.assert_close(gx, want)
    with pytest.raises(RuntimeError, match="no double backward"):
        (gx**2).sum().backward()


def test_in_place_changes_of_target_or_weight_are_caught_before_a_second_backward():
    x = torch.randn(4, 5, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3])
    w = torch.rand(5) + 0.5
    for change in ("target", "weight"):
        loss = cross_entropy(x, t.clone() if change == "target" else t, weight=w.clone())
        torch.autograd.grad(loss, x, retain_graph=True)
        fn = loss.grad_fn
        saved = fn.saved_tensors
        (saved[1] if change == "target" else saved[2]).add_(1)  # the tensors the loss was computed with
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(loss, x)


def test_float16_keeps_small_gradients_under_a_large_upstream_gradient():
    # float16 is not fused: a gradient rounded for an upstream 1 and scaled afterwards would
    # flush the small entries that loss scaling is meant to keep.
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(256, 512, generator=g) * 3).half().requires_grad_()
    t = torch.randint(0, 512, (256,), generator=g)
    (got,) = torch.autograd.grad(cross_entropy(x, t), x, torch.tensor(1024.0, dtype=torch.float16))
    xr = x.detach().float().requires_grad_()
    (want,) = torch.autograd.grad(F.cross_entropy(xr, t), xr, torch.tensor(1024.0))
    assert (got == 0).sum() <= (want.half() == 0).sum()
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_classes(prob, reduction):
    x = torch.randn(5, 0, requires_grad=True)
    t = torch.randn(5, 0).softmax(1) if prob else torch.full((5,), -100)
    got = cross_entropy(x, t, reduction=reduction)
    want = F.cross_entropy(x, t, reduction=reduction)
    torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("isa", available_isas())
def test_every_instruction_set(isa):
    _native.set_isa(isa)
    for shape, prob in itertools.product([(33, 100), (3, 40_000), (2, 9, 70)], [False, True]):
        _compare(shape, torch.float32, prob, OPTIONS[5])


def test_float16_and_legacy_arguments():
    x, t = torch.randn(6, 5), torch.randint(0, 5, (6,))
    torch.testing.assert_close(cross_entropy(x.half(), t), F.cross_entropy(x.half(), t), rtol=2e-3, atol=2e-3)
    with pytest.warns(UserWarning):
        torch.testing.assert_close(
            cross_entropy(x, t, size_average=False), F.cross_entropy(x, t, reduction="sum")
        )
    torch.testing.assert_close(cross_entropy(x, t, reduce=False), F.cross_entropy(x, t, reduction="none"))
    # uint8 class targets and mixed-precision probability targets, as torch allows.
    torch.testing.assert_close(cross_entropy(x, t.byte()), F.cross_entropy(x, t))
    p = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    got, want = cross_entropy(x, p), F.cross_entropy(x, p)
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want)


def test_nan_and_inf_follow_torch():
    x = torch.randn(6, 5)
    x[1, 2] = float("nan")
    x[2, 0] = float("inf")
    x[3, :] = float("-inf")
    x[4, 1] = float("-inf")
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    for kw in [dict(reduction="none"), dict(reduction="none", ignore_index=2), dict(label_smoothing=0.1)]:
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = cross_entropy(xo, t, **kw), F.cross_entropy(xt, t, **kw)
        torch.testing.assert_close(got, want, equal_nan=True)
        g = torch.ones_like(want)
        torch.testing.assert_close(
            torch.autograd.grad(got, xo, g)[0], torch.autograd.grad(want, xt, g)[0], equal_nan=True
        )


def test_all_rows_ignored_gives_nan_mean_like_torch():
    x, t = torch.randn(3, 4), torch.full((3,), -100)
    assert torch.isnan(cross_entropy(x, t)) and torch.isnan(F.cross_entropy(x, t))
    assert cross_entropy(x, t, reduction="sum") == 0


BAD = {
    "target out of range": lambda: ((torch.randn(4, 5), torch.tensor([0, 1, 2, 5])), {}),
    "negative target": lambda: ((torch.randn(4, 5), torch.tensor([0, 1, 2, -1])), {}),
    "batch mismatch": lambda: ((torch.randn(4, 5), torch.tensor([0, 1, 2])), {}),
    "float class target": lambda: ((torch.randn(4, 5), torch.tensor([0.0, 1, 2, 3])), {}),
    "int32 target": lambda: ((torch.randn(4, 5), torch.tensor([0, 1, 2, 3], dtype=torch.int32)), {}),
    "probabilities with ignore_index": lambda: ((torch.randn(4, 5), torch.rand(4, 5)), dict(ignore_index=0)),
    "integer probabilities": lambda: ((torch.randn(4, 5), torch.ones(4, 5, dtype=torch.long)), {}),
    "weight of wrong length": lambda: (
        (torch.randn(4, 5), torch.tensor([0, 1, 2, 3])),
        dict(weight=torch.ones(4)),
    ),
    "2-d weight": lambda: ((torch.randn(4, 5), torch.tensor([0, 1, 2, 3])), dict(weight=torch.ones(5, 1))),
    "weight dtype": lambda: (
        (torch.randn(4, 5), torch.tensor([0, 1, 2, 3])),
        dict(weight=torch.ones(5).double()),
    ),
    "label_smoothing > 1": lambda: (
        (torch.randn(4, 5), torch.tensor([0, 1, 2, 3])),
        dict(label_smoothing=1.5),
    ),
    "prob label_smoothing > 1": lambda: ((torch.randn(4, 5), torch.rand(4, 5)), dict(label_smoothing=1.5)),
    "bad reduction": lambda: ((torch.randn(4, 5), torch.tensor([0, 1, 2, 3])), dict(reduction="avg")),
    "K-dim target shape": lambda: ((torch.randn(2, 5, 3), torch.zeros(2, 4, dtype=torch.long)), {}),
    "1-d input, 2 targets": lambda: ((torch.randn(5), torch.tensor([0, 1])), {}),
    "2-d target": lambda: ((torch.randn(4, 5), torch.zeros(4, 1, dtype=torch.long)), {}),
    "0-d input": lambda: ((torch.randn(()), torch.tensor(0.0)), {}),
    "weight requiring grad": lambda: (
        (torch.randn(3, 5), torch.tensor([0, 1, 2])),
        dict(weight=torch.rand(5, requires_grad=True)),
    ),
    "integer input": lambda: ((torch.randn(2, 5, 3).int(), torch.zeros(2, 3, dtype=torch.long)), {}),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_inputs_raise_like_torch(case):
    args, kw = case()
    with pytest.raises(Exception) as want:
        F.cross_entropy(*args, **kw)
    with pytest.raises(want.type) as got:
        cross_entropy(*args, **kw)
    assert str(got.value) == str(want.value)


def test_kernel_rechecks_what_python_skipped():
    x = torch.randn(4, 5)
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        OPS.cross_entropy_forward(x, torch.tensor([0, 7, 1, 2]), None, 1, -100, 0.0)
    lse, asum, tw = torch.empty(4), torch.empty(0), torch.empty(1)
    kw = dict(outer=4, classes=5, inner=1, reduction=1, ignore_index=-100, label_smoothing=0.0, num_threads=1)
    t = torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="elements"):
        _native.cross_entropy_forward(x, t, None, torch.empty(()), lse, asum, tw, **{**kw, "classes": 6})
    with pytest.raises(RuntimeError, match="wrong sizes"):
        _native.cross_entropy_forward(x, t, None, torch.empty(()), torch.empty(3), asum, tw, **kw)
    with pytest.raises(RuntimeError, match="overlaps"):
        _native.cross_entropy_forward(x, t, None, x[0, 0], lse, asum, tw, **kw)
    with pytest.raises(RuntimeError, match="dtype"):
        _native.cross_entropy_forward(x, t, None, torch.empty(()), lse.double(), asum, tw, **kw)
    with pytest.raises(RuntimeError, match="int64"):
        _native.cross_entropy_forward(x, t.int(), None, torch.empty(()), lse, asum, tw, **kw)
    with pytest.raises(RuntimeError, match="contiguous"):
        _native.cross_entropy_forward(x.t(), t, None, torch.empty(()), lse, asum, tw, **kw)
    # Nothing was written through the refused calls.
    assert torch.equal(x, x.clone())


def test_non_contiguous_inputs():
    x = torch.randn(5, 8).t()  # (8, 5), not contiguous
    t = torch.randint(0, 5, (16,))[::2]
    xo, xt = x.clone().t().contiguous().t().requires_grad_(), x.clone().requires_grad_()
    assert not xo.is_contiguous()
    got, want = cross_entropy(xo, t), F.cross_entropy(xt, t)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, xo)[0], torch.autograd.grad(want, xt)[0])


def _samples():
    w = torch.rand(5, dtype=torch.float64) + 0.5
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 4, 2, -100, 1, 3])
    p = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1).requires_grad_()
    xk = torch.randn(2, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    tk = torch.randint(0, 5, (2, 3, 2))
    return [
        (x, t, None, 1, -100, 0.0),
        (x, t, w, 0, -100, 0.3),
        (x, t.where(t >= 0, 4), w, 2, 4, 0.0),
        (x, p, w, 1, -100, 0.2),
        (xk, tk, None, 0, -100, 0.1),
        (xk.float().detach().requires_grad_(), tk, None, 1, -100, 0.0),
    ]


@pytest.mark.parametrize("i", range(6))
def test_opcheck(i):
    torch.library.opcheck(OPS.cross_entropy_forward, _samples()[i])


def test_opcheck_backward_ops():
    x, t, w, red, ii, ls = _samples()[1]
    _, lse, asum, tw = OPS.cross_entropy_forward(x.detach(), t, w, red, ii, ls)
    g = torch.randn(6, dtype=torch.float64)
    torch.library.opcheck(OPS.cross_entropy_backward, (g, x.detach(), t, w, lse, asum, tw, red, ii, ls))
    p = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    _, lse, asum, tw = OPS.cross_entropy_forward(x.detach(), p, w, red, -100, ls)
    torch.library.opcheck(OPS.cross_entropy_target_backward, (g, x.detach(), w, lse, tw, red, ls))
    torch.library.opcheck(OPS.cross_entropy_weight_backward, (g, x.detach(), p, lse, tw, red, ls))
    torch.library.opcheck(
        OPS.cross_entropy_backward_, (g, x.detach().clone(), p, w, lse, asum, tw, red, -100, ls)
    )


@pytest.mark.parametrize("i", range(5))
def test_gradcheck_float64(i):
    x, t, w, red, ii, ls = _samples()[i]
    reduction = ["none", "mean", "sum"][red]
    inputs = (x, t) if not t.is_floating_point() else (x, t)
    fn = lambda x, t: cross_entropy(x, t, weight=w, ignore_index=ii, reduction=reduction, label_smoothing=ls)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("shape", [(6, 5), (5,), (3, 4, 2, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_weight_gradient_with_probability_targets(shape, reduction, label_smoothing):
    # torch differentiates the class weights when the targets are probabilities (with class
    # indices it refuses, and so do we: see test_bad_inputs).
    g = torch.Generator().manual_seed(0)
    classes = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(shape, generator=g, dtype=torch.float64).softmax(0 if len(shape) == 1 else 1)
    w = (torch.rand(classes, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    kw = {"reduction": reduction, "label_smoothing": label_smoothing}
    ours = cross_entropy(x, t, w, **kw)
    ref = F.cross_entropy(x, t, w, **kw)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(ours, (x, w), gy), torch.autograd.grad(ref, (x, w), gy), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Only the weight requiring grad still builds a graph; gradcheck covers the float64 kernel.
    (gw,) = torch.autograd.grad(cross_entropy(x.detach(), t, w, **kw).sum(), w)
    torch.testing.assert_close(gw, torch.autograd.grad(F.cross_entropy(x.detach(), t, w, **kw).sum(), w)[0])
    assert torch.autograd.gradcheck(lambda w_: cross_entropy(x.detach(), t, w_, **kw), (w,))


def test_module_is_a_drop_in():
    w = torch.rand(5) + 0.5
    ours = CrossEntropyLoss(weight=w, ignore_index=2, label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight=w, ignore_index=2, label_smoothing=0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x, t = torch.randn(8, 5, requires_grad=True), torch.randint(0, 5, (8,))
    torch.testing.assert_close(ours(x, t), theirs(x, t))
    ours.load_state_dict(theirs.state_dict())
    assert CrossEntropyLoss(reduction="sum").reduction == "sum"


def test_inplace_backward_writes_the_gradient_into_the_logits():
    h = torch.randn(16, 8, requires_grad=True)
    lin = torch.nn.Linear(8, 300)
    t = torch.randint(0, 300, (16,))
    want = torch.autograd.grad(F.cross_entropy(lin(h), t, label_smoothing=0.1), [h, lin.weight])
    logits = lin(h)
    ptr = logits.data_ptr()
    loss = cross_entropy_inplace_backward(logits, t, label_smoothing=0.1)
    torch.testing.assert_close(loss, F.cross_entropy(lin(h), t, label_smoothing=0.1))
    got = torch.autograd.grad(loss, [h, lin.weight, logits], retain_graph=False)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert got[2].data_ptr() == ptr  # the gradient lives in the logits' own buffer
    module = CrossEntropyLoss(inplace_backward=True)
    logits = lin(h)
    module(logits, t).backward()
    assert "inplace_backward=True" in repr(module)


def test_inplace_backward_refuses_logits_needed_elsewhere():
    leaf = torch.randn(4, 5, requires_grad=True)
    t = torch.randint(0, 5, (4,))
    with pytest.raises(RuntimeError, match="leaf"):
        cross_entropy_inplace_backward(leaf, t)
    with pytest.raises(RuntimeError, match="ExpBackward0"):
        cross_entropy_inplace_backward((leaf * 2).exp(), t)
    with pytest.raises(RuntimeError, match="contiguous"):
        cross_entropy_inplace_backward((leaf * 2).t().contiguous().t(), t)
    # Another op saved the logits for its own backward: torch's version check refuses.
    logits = leaf * 2
    other = (logits**2).sum()
    loss = cross_entropy_inplace_backward(logits, t)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_torch_compile_fullgraph():
    x, t = torch.randn(8, 5, requires_grad=True), torch.randint(0, 5, (8,))
    loss = lambda x, t: cross_entropy(x, t, label_smoothing=0.1)  # noqa: E731
    fn = torch.compile(loss, backend="aot_eager", fullgraph=True)
    got, want = fn(x, t), F.cross_entropy(x, t, label_smoothing=0.1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


def test_the_common_training_call_takes_the_fused_kernel_and_others_the_registered_op():
    # The plain call (N, C) logits needing a gradient, int64 targets, default options) is decided
    # in a few attribute reads; everything else must still meet torch's checks and the
    # dispatcher. Both routes give the same bits.
    x = torch.randn(64, 10, requires_grad=True)
    t = torch.randint(0, 10, (64,))
    fast = cross_entropy(x, t)
    assert type(fast.grad_fn).__name__ == "_FusedCrossEntropyBackward"
    slow = cross_entropy(x, t, reduction="mean", label_smoothing=0)  # an int: the general route
    assert torch.equal(fast, slow)
    assert torch.equal(torch.autograd.grad(fast, x)[0], torch.autograd.grad(slow, x)[0])
    for p in (torch.nn.Parameter(x.detach().clone()),):
        assert torch.equal(cross_entropy(p, t), fast)
    with pytest.raises(IndexError, match="Target 10 is out of bounds"):
        cross_entropy(x, torch.full((64,), 10))
    with pytest.raises(ValueError, match="is not a valid value for reduction"):
        cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="Expected input batch_size"):
        cross_entropy(x, t[:3])

    class Logged(torch.utils._python_dispatch.TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Logged() as mode:
        loss = cross_entropy(x, t)
    assert any("cross_entropy_forward" in op for op in mode.ops)  # the registered op, not the shortcut
    torch.testing.assert_close(loss, fast)
