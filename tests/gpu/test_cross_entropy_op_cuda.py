"""bigmodel_native.ops.cross_entropy / nn.CrossEntropyLoss on CUDA tensors (needs a GPU).

The same options as the CPU tests (tests/ops/test_cross_entropy.py) against F.cross_entropy on the
same CUDA tensors upcast to fp32: input layouts (C,), (N, C), (N, C, d1, d2), reductions, weights,
ignore_index, label smoothing, fp32 / bf16 / fp16, the in-place backward; opcheck on CUDA tensors,
no host synchronisation, and the clear refusals.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native import nn as bnn
from bigmodel_native.ops import cross_entropy, cross_entropy_inplace_backward

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=1e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
LAYOUTS = {"C": (37,), "NC": (33, 1001), "NCd": (4, 19, 3, 5)}


def _case(layout: str, dtype: torch.dtype, weighted: bool, ignore: int):
    shape = LAYOUTS[layout]
    c = shape[0] if len(shape) == 1 else shape[1]
    x = (torch.randn(shape, device=DEV) * 3).to(dtype)
    tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = torch.randint(0, c, tshape, device=DEV)
    if t.dim() and t.numel() > 2:
        t.view(-1)[1] = ignore
    w = (torch.rand(c, device=DEV) + 0.1).to(dtype) if weighted else None
    return x, t, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_torch(layout, smoothing, weighted, reduction, dtype):
    x, t, w = _case(layout, dtype, weighted, ignore=2)
    kw = dict(weight=w, ignore_index=2, reduction=reduction, label_smoothing=smoothing)
    xa = x.clone().requires_grad_(True)
    loss = cross_entropy(xa, t, **kw)
    xr = x.float().requires_grad_(True)
    ref = F.cross_entropy(xr, t, **{**kw, "weight": None if w is None else w.float()})
    assert loss.dtype == dtype and loss.shape == ref.shape and loss.device == x.device
    torch.testing.assert_close(loss.float(), ref.detach(), **TOL[dtype])
    go = torch.randn(ref.shape, device=DEV)
    loss.backward(go.to(dtype))
    ref.backward(go.to(dtype).float())
    assert xa.grad.dtype == dtype and xa.grad.shape == x.shape
    torch.testing.assert_close(xa.grad.float(), xr.grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_and_module(dtype):
    x, t, _ = _case("NC", dtype, weighted=False, ignore=-100)
    lin = torch.nn.Linear(x.shape[1], x.shape[1], device=DEV, dtype=dtype)
    ref_lin = torch.nn.Linear(x.shape[1], x.shape[1], device=DEV, dtype=dtype)
    ref_lin.load_state_dict(lin.state_dict())
    loss = bnn.CrossEntropyLoss(label_smoothing=0.1, inplace_backward=True)(lin(x), t)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(ref_lin(x), t)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss.float(), ref.float(), **TOL[dtype])
    torch.testing.assert_close(lin.weight.grad.float(), ref_lin.weight.grad.float(), **TOL[dtype])
    logits = lin(x)
    out = cross_entropy_inplace_backward(logits, t, label_smoothing=0.1)
    out.backward()
    torch.testing.assert_close(lin.weight.grad.float(), 2 * ref_lin.weight.grad.float(), **TOL[dtype])


def test_forward_and_backward_never_synchronise_the_host():
    x, t, w = _case("NC", torch.bfloat16, weighted=True, ignore=2)
    x.requires_grad_(True)
    cross_entropy(x, t, weight=w).backward()  # compile and load the kernels first
    torch.cuda.set_sync_debug_mode("error")
    try:
        cross_entropy(x, t, weight=w, label_smoothing=0.1).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck_on_cuda_tensors(reduction):
    x = torch.randn(6, 11, device=DEV, requires_grad=True)
    t = torch.randint(0, 11, (6,), device=DEV)
    w = torch.rand(11, device=DEV) + 0.5
    op = torch.ops.bigmodel_native.cross_entropy_forward.default
    torch.library.opcheck(op, (x, t, w, reduction, -100, 0.1))
    torch.library.opcheck(op, (x, t, None, reduction, 3, 0.0))


def test_out_of_range_target_gives_nan_not_a_read_out_of_bounds():
    x = torch.randn(4, 7, device=DEV)
    t = torch.tensor([0, 7, 3, -5], device=DEV)
    loss = cross_entropy(x, t, reduction="none")
    assert loss[0].isfinite() and loss[2].isfinite()
    assert loss[1].isnan() and loss[3].isnan()


def test_refusals():
    x = torch.randn(4, 7, device=DEV)
    with pytest.raises(RuntimeError, match="same device"):
        cross_entropy(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="class-probability"):
        cross_entropy(x, torch.softmax(torch.randn(4, 7, device=DEV), 1))
    with pytest.raises(NotImplementedError, match="float64"):
        cross_entropy(x.double(), torch.zeros(4, dtype=torch.long, device=DEV))
