"""The CUDA cross-entropy kernels against torch.nn.functional.cross_entropy (needs a GPU).

Calls ``bigmodel_native._cuda.cross_entropy_forward/backward`` directly (the op wiring comes with
the cross-entropy op). The reference runs in fp32 on the upcast logits; the backward is compared
with autograd's gradient of that reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native import _cuda

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
# Odd class counts take the unaligned (scalar) path from the second row on; 50257 is GPT-2's vocab.
SHAPES = [(1, 1), (7, 5), (64, 1000), (3, 50257), (16, 4099)]
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=1e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def _inputs(n, c, dtype, ignore_index, weighted):
    x = (torch.randn(n, c, device=DEV) * 3).to(dtype)
    t = torch.randint(0, c, (n,), device=DEV)
    if n > 2:
        t[1] = ignore_index
    w = torch.rand(c, device=DEV).to(dtype) + 0.1 if weighted else None
    return x, t, w


def _reference(x, t, w, **kw):
    xr = x.float().requires_grad_(True)
    loss = F.cross_entropy(xr, t, weight=None if w is None else w.float(), **kw)
    return xr, loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_torch(shape, smoothing, weighted, reduction, dtype):
    n, c = shape
    ignore = 3 if c > 3 else -100
    x, t, w = _inputs(n, c, dtype, ignore, weighted)
    kw = dict(ignore_index=ignore, reduction=reduction, label_smoothing=smoothing)
    loss, lse, total = _cuda.cross_entropy_forward(x, t, w, **kw)
    xr, ref = _reference(x, t, w, **kw)
    assert loss.dtype == dtype and loss.shape == ref.shape
    torch.testing.assert_close(loss.float(), ref.detach(), **TOL[dtype])
    torch.testing.assert_close(lse, torch.logsumexp(x.float(), dim=1), **TOL[dtype])

    go = torch.randn(ref.shape, device=DEV).to(dtype)
    ref.backward(go.float())
    grad = _cuda.cross_entropy_backward(go, x, t, lse, total, w, **kw)
    assert grad.dtype == dtype and grad.shape == x.shape
    torch.testing.assert_close(grad.float(), xr.grad, **TOL[dtype])


def test_inplace_gradient_overwrites_the_logits():
    x, t, _ = _inputs(32, 3001, torch.bfloat16, -100, False)
    keep = x.clone()
    loss, lse, total = _cuda.cross_entropy_forward(x, t)
    expected = _cuda.cross_entropy_backward(torch.ones((), device=DEV, dtype=x.dtype), keep, t, lse, total)
    grad = _cuda.cross_entropy_backward(
        torch.ones((), device=DEV, dtype=x.dtype), x, t, lse, total, inplace=True
    )
    assert grad.data_ptr() == x.data_ptr()
    torch.testing.assert_close(grad, expected, atol=0, rtol=0)


def test_all_rows_ignored_gives_nan_mean_like_torch():
    x = torch.randn(4, 10, device=DEV)
    t = torch.full((4,), -100, device=DEV)
    loss, _, total = _cuda.cross_entropy_forward(x, t)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x, t))
    assert float(total) == 0.0


def test_out_of_range_target_is_flagged_not_read():
    x = torch.randn(3, 10, device=DEV)
    t = torch.tensor([1, 10, -5], device=DEV)
    flag = torch.zeros(1, dtype=torch.int32, device=DEV)
    loss, _, _ = _cuda.cross_entropy_forward(x, t, reduction="none", error_flag=flag)
    assert int(flag) == 1
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1:]).all()


def test_no_host_synchronisation():
    x, t, w = _inputs(64, 32000, torch.bfloat16, -100, True)
    _cuda.cross_entropy_forward(x, t, w)  # compiles and loads the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, lse, total = _cuda.cross_entropy_forward(x, t, w, label_smoothing=0.1)
        _cuda.cross_entropy_backward(
            torch.ones((), device=DEV, dtype=x.dtype), x, t, lse, total, w, label_smoothing=0.1
        )
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_bad_arguments():
    x, t, _ = _inputs(4, 10, torch.float32, -100, False)
    with pytest.raises(ValueError, match="reduction"):
        _cuda.cross_entropy_forward(x, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        _cuda.cross_entropy_forward(x, t, label_smoothing=1.5)
    with pytest.raises(RuntimeError, match="target"):
        _cuda.cross_entropy_forward(x, t.int())
    with pytest.raises(TypeError, match="dtype"):
        _cuda.cross_entropy_forward(x.double(), t)
