"""The CUDA cross-entropy kernels' own source, run on the CPU (no GPU needed), against torch.

cross_entropy.cu is compiled by g++ with tests/gpu/cross_entropy_emulation.cpp, which runs each
CUDA thread of a block as an OS thread (barriers for __syncthreads, a per-warp exchange buffer for
__shfl_xor_sync). Device addresses are host addresses here. Launches mirror
crates/bigmodel-cuda/src/cross_entropy.rs: forward, then the one-block reduction for 'mean' /
'sum'; backward. Grids smaller than the row count exercise the grid-stride loop. What this cannot
check (the real launch, warp scheduling, timing) is left to test_cross_entropy_cuda.py on a GPU.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
U64, I64 = ctypes.c_uint64, ctypes.c_int64


class CeForward(ctypes.Structure):
    _fields_ = [
        *[
            (n, U64)
            for n in ("logits", "target", "weight", "lse", "row_loss", "row_weight", "loss_none", "flag")
        ],
        *[(n, I64) for n in ("n_rows", "n_classes", "ignore_index")],
        ("label_smoothing", ctypes.c_float),
        ("pad", ctypes.c_int32),
    ]


class CeReduce(ctypes.Structure):
    _fields_ = [
        *[(n, U64) for n in ("row_loss", "row_weight", "out", "total_weight")],
        ("n_rows", I64),
        ("mean", ctypes.c_int32),
        ("pad", ctypes.c_int32),
    ]


class CeBackward(ctypes.Structure):
    _fields_ = [
        *[(n, U64) for n in ("logits", "target", "weight", "lse", "grad_out", "total_weight", "grad_in")],
        *[(n, I64) for n in ("n_rows", "n_classes", "ignore_index")],
        ("label_smoothing", ctypes.c_float),
        ("grad_out_per_row", ctypes.c_int32),
    ]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++ to build the host emulation")
    so = tmp_path_factory.mktemp("emu") / "cross_entropy_emulation.so"
    src = HERE / "cross_entropy_emulation.cpp"
    try:
        subprocess.run(
            [cxx, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-o", str(so), str(src)], check=True
        )
    except subprocess.CalledProcessError:
        pytest.skip("this g++ cannot build the emulation (needs C++20 <barrier>)")
    return ctypes.CDLL(str(so))


DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def forward(lib, x, t, w, ignore_index, reduction, smoothing, grid):
    n, c = x.shape
    lse = torch.empty(n)
    none = reduction == "none"
    out = torch.empty(n if none else (), dtype=x.dtype)
    row_loss, row_w, total = (None, None, None) if none else (torch.empty(n), torch.empty(n), torch.empty(()))
    flag = torch.zeros((), dtype=torch.int32)
    a = CeForward(x.data_ptr(), t.data_ptr(), _ptr(w), lse.data_ptr(), _ptr(row_loss), _ptr(row_w))
    a.loss_none, a.flag = out.data_ptr() if none else 0, flag.data_ptr()
    a.n_rows, a.n_classes, a.ignore_index, a.label_smoothing = n, c, ignore_index, smoothing
    lib.forward(ctypes.byref(a), DTYPES[x.dtype], grid)
    if not none:
        r = CeReduce(
            row_loss.data_ptr(), row_w.data_ptr(), out.data_ptr(), total.data_ptr(), n, reduction == "mean"
        )
        lib.reduce(ctypes.byref(r), DTYPES[x.dtype])
    return out, lse, total, int(flag)


def backward(lib, go, x, t, w, lse, total, ignore_index, reduction, smoothing, grid, grad_in=None):
    n, c = x.shape
    grad_in = torch.empty_like(x) if grad_in is None else grad_in
    a = CeBackward(x.data_ptr(), t.data_ptr(), _ptr(w), lse.data_ptr(), go.data_ptr())
    a.total_weight = total.data_ptr() if reduction == "mean" else 0
    a.grad_in, a.n_rows, a.n_classes, a.ignore_index = grad_in.data_ptr(), n, c, ignore_index
    a.label_smoothing, a.grad_out_per_row = smoothing, reduction == "none"
    lib.backward(ctypes.byref(a), DTYPES[x.dtype], grid)
    return grad_in


TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=1e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


# Rows take the 16-byte path (4 fp32 or 8 16-bit elements per load) when aligned, else the scalar
# one: (7, 5) scalar from row 1; (6, 1028) and (5, 2051) vectors plus a tail on row 0, scalar rows
# after; (4, 1032) in 16-bit: every row vectorised. Every option on fp32;
# the 16-bit types on the paths their loads and stores change (the emulation runs 512 OS threads
# per block, so the full product would take minutes).
OPTIONS = [(False, 0.0), (True, 0.0), (False, 0.1), (True, 0.2)]
CASES = [((5, 2051), torch.float32, r, w, ls) for r in ("none", "mean", "sum") for w, ls in OPTIONS]
CASES += [
    (shape, d, r, True, 0.2)
    for d in (torch.bfloat16, torch.float16)
    for shape, r in (((6, 1028), "mean"), ((5, 2051), "none"))
]
CASES += [((7, 5), d, "sum", False, 0.0) for d in DTYPES]
CASES += [((4, 1032), d, "sum", False, 0.1) for d in (torch.bfloat16, torch.float16)]  # every row 8-wide


@pytest.mark.parametrize("shape,dtype,reduction,weighted,smoothing", CASES, ids=str)
def test_kernels_match_torch(lib, shape, dtype, reduction, weighted, smoothing):
    n, c = shape
    x = (torch.randn(n, c) * 3).to(dtype)
    t = torch.randint(0, c, (n,))
    t[1] = 3  # ignore_index
    w = (torch.rand(c) + 0.1).to(dtype) if weighted else None
    kw = dict(ignore_index=3, reduction=reduction, label_smoothing=smoothing)
    grid = 3  # fewer blocks than rows: the grid-stride loop
    loss, lse, total, flag = forward(lib, x, t, w, 3, reduction, smoothing, grid)
    xr = x.float().requires_grad_(True)
    ref = F.cross_entropy(xr, t, weight=None if w is None else w.float(), **kw)
    assert flag == 0
    torch.testing.assert_close(loss.float(), ref.detach(), **TOL[dtype])
    torch.testing.assert_close(lse, torch.logsumexp(x.float(), 1), **TOL[dtype])
    go = torch.randn(ref.shape).to(dtype)
    ref.backward(go.float())
    grad = backward(lib, go, x, t, w, lse, total, 3, reduction, smoothing, grid)
    torch.testing.assert_close(grad.float(), xr.grad, **TOL[dtype])
    # In place: the gradient written over the logits is the same.
    inplace = backward(lib, go, x, t, w, lse, total, 3, reduction, smoothing, grid, grad_in=x)
    assert inplace.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, grad, atol=0, rtol=0)


def test_bad_target_is_flagged_and_not_read(lib):
    x = torch.randn(3, 10)
    t = torch.tensor([1, 10, -5])
    loss, _, _, flag = forward(lib, x, t, None, -100, "none", 0.0, 3)
    assert flag == 1
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1:]).all()


def test_all_rows_ignored(lib):
    x = torch.randn(4, 9)
    t = torch.full((4,), -100)
    loss, _, total, _ = forward(lib, x, t, None, -100, "mean", 0.0, 4)
    assert torch.isnan(loss) and float(total) == 0.0
    grad = backward(lib, torch.ones(()), x, t, None, torch.logsumexp(x, 1), total, -100, "mean", 0.0, 4)
    assert torch.equal(grad, torch.zeros_like(x))
