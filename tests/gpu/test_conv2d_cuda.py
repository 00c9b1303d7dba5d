"""bigmodel_native.ops.conv2d / nn.Conv2d on CUDA tensors (needs a GPU): the CPU tests' grid
(tests/ops/test_conv2d.py) against F.conv2d on the same CUDA tensors, forward and all three
gradients, fp32 / bf16 / fp16; chunked batches, empty batches, opcheck on CUDA tensors, no host
synchronisation, and the refusals (float64, mixed devices)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bigmodel_native import nn as bnn
from bigmodel_native.ops import conv2d, conv2d_cuda

from tests.ops.test_conv2d import GRID, OPCHECK, _ids

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
#: fp32 against torch's CUDA convolution (both exact fp32, different summation orders).
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact fp32 on both sides (torch's convolutions and ours follow cudnn.allow_tf32)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _inputs(xs, ws, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xs, generator=g, dtype=torch.float64).to(DEV, dtype).requires_grad_()
    w = torch.randn(ws, generator=g, dtype=torch.float64).to(DEV, dtype).requires_grad_()
    b = torch.randn(ws[0], generator=g, dtype=torch.float64).to(DEV, dtype).requires_grad_() if bias else None
    return x, w, b


def _run(fn, xs, ws, kw, dtype, bias=True, ref=False):
    """(output, grad_input, grad_weight, grad_bias); the reference runs F.conv2d in fp64 on the CPU
    on the same rounded inputs."""
    x, w, b = _inputs(xs, ws, dtype, bias)
    if ref:
        x, w = x.detach().cpu().double().requires_grad_(), w.detach().cpu().double().requires_grad_()
        b = None if b is None else b.detach().cpu().double().requires_grad_()
    y = fn(x, w, b, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gy = gy.to(dtype).to(y.device, y.dtype)
    y.backward(gy)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("row", GRID, ids=_ids)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_torch(row, bias, dtype) -> None:
    xs, ws, kw = row
    ours = _run(conv2d, xs, ws, kw, dtype, bias)
    ref = _run(F.conv2d, xs, ws, kw, dtype, bias, ref=True)
    depth = ws[1] * ws[2] * ws[3]
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref, strict=True):
        if r is None:
            assert a is None, name
            continue
        assert a.device.type == "cuda" and a.dtype == dtype and a.shape == r.shape, name
        scale = r.abs().max().item() + 1.0
        err = (a.cpu().double() - r).abs().max().item()
        # fp32 accumulation everywhere; the output rounding of the storage type dominates.
        tol = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
        assert err <= tol * scale * (1 + depth / 16), f"{name}: {err} vs scale {scale}"
    if dtype == torch.float32:
        # torch's own CUDA convolution agrees too (same tensors on the GPU).
        cu = _run(F.conv2d, xs, ws, kw, dtype, bias)
        for a, r in zip(ours, cu, strict=True):
            if r is not None:
                torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_unbatched_and_module() -> None:
    x, w, b = _inputs((3, 8, 9), (4, 3, 3, 3), torch.float32)
    torch.testing.assert_close(conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1), **TOL)
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", device=DEV)
    ours = bnn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", device=DEV)
    ours.load_state_dict(ref.state_dict())
    xx = torch.randn(2, 3, 7, 6, device=DEV)
    y1, y2 = ref(xx), ours(xx)
    torch.testing.assert_close(y2, y1, **TOL)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **TOL)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **TOL)


def test_non_contiguous_inputs() -> None:
    x, w, b = _inputs((2, 3, 10, 12), (4, 3, 3, 3), torch.float32)
    for t in (x.detach()[:, :, ::2, 1:], x.detach().to(memory_format=torch.channels_last)):
        torch.testing.assert_close(conv2d(t, w, b), F.conv2d(t, w, b), **TOL)


def test_chunked_batch(monkeypatch) -> None:
    """A column budget of about one image: every image is its own pass (weight gradient summed
    over passes in the fp32 accumulator)."""
    monkeypatch.setattr(conv2d_cuda, "COL_BUDGET", 3 * 9 * 7 * 7 * 4 * 2)
    for dtype in (torch.float32, torch.bfloat16):
        ours = _run(conv2d, (5, 3, 9, 9), (4, 3, 3, 3), {"padding": 0}, dtype)
        ref = _run(F.conv2d, (5, 3, 9, 9), (4, 3, 3, 3), {"padding": 0}, dtype, ref=True)
        for a, r in zip(ours, ref, strict=True):
            tol = 1e-5 if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(a.cpu().double(), r, rtol=tol, atol=tol * (r.abs().max().item() + 1))


def test_empty_batch() -> None:
    x, w, b = _inputs((0, 3, 5, 5), (4, 3, 3, 3), torch.float32)
    y = conv2d(x, w, b)
    assert y.shape == (0, 4, 3, 3) and y.is_cuda
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_no_host_sync() -> None:
    x, w, b = _inputs((8, 3, 16, 16), (8, 3, 3, 3), torch.bfloat16)
    conv2d(x, w, b, padding=1).float().sum().backward()  # compile, create the cuBLAS handle
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = conv2d(x, w, b, padding=1)
        y.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_cuda_graph_capture() -> None:
    x, w, b = _inputs((4, 3, 12, 12), (6, 3, 3, 3), torch.float32)
    xs, ws_, bs = x.detach(), w.detach(), b.detach()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        conv2d(xs, ws_, bs)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = conv2d(xs, ws_, bs)
    xs.copy_(torch.randn_like(xs))
    graph.replay()
    torch.testing.assert_close(y, F.conv2d(xs, ws_, bs), **TOL)


@pytest.mark.parametrize("args", OPCHECK)
def test_opcheck(args) -> None:
    xs, ws, bias, stride, padding, dilation, groups = args
    x, w, b = _inputs(xs, ws, torch.float32, bias)
    torch.library.opcheck(torch.ops.bigmodel_native.conv2d, (x, w, b, stride, padding, dilation, groups))
    y = torch.ops.bigmodel_native.conv2d(x, w, b, stride, padding, dilation, groups)
    gy = torch.randn(y.shape, device=DEV)
    torch.library.opcheck(
        torch.ops.bigmodel_native.conv2d_backward,
        (gy, x.detach(), w.detach(), stride, padding, dilation, groups, [True, True, bias]),
    )


def test_float64_is_refused() -> None:
    x, w, b = _inputs((2, 3, 6, 6), (4, 3, 3, 3), torch.float64)
    with pytest.raises(NotImplementedError, match="float64"):
        conv2d(x, w, b)


def test_mixed_devices() -> None:
    x = torch.randn(2, 3, 6, 6, device=DEV)
    w = torch.randn(4, 3, 3, 3)
    for args in ((x, w), (x.cpu(), w.to(DEV)), (x, w.to(DEV), torch.randn(4))):
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            conv2d(*args)


def test_unsupported_dtype() -> None:
    with pytest.raises(TypeError, match="unsupported dtype torch.int64"):
        conv2d(
            torch.ones(1, 1, 4, 4, dtype=torch.long, device=DEV),
            torch.ones(1, 1, 3, 3, dtype=torch.long, device=DEV),
        )
