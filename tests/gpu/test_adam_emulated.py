"""The CUDA Adam kernels' own source, run on the CPU (no GPU needed), against torch.optim.Adam(W).

adam.cu is compiled by g++ together with tests/gpu/adam_emulation.cpp, which defines the CUDA
built-ins it uses and runs every thread of every block in turn (valid because these kernels have
no shared memory, shuffles or barriers). Device addresses are host addresses here, so the kernels
read and write CPU tensors. This checks the kernels' indexing (chunks, the 4-wide path and its
tail, tensors continued across launches), the step-counter bumps, AMP and the arithmetic, for
fp32, bf16 and fp16 storage. What it cannot check (the real launch, the driver, timing) is left to
test_adam_cuda.py on a GPU.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
_SOURCE = (HERE.parents[1] / "crates/bigmodel-cuda/kernels/adam.cu").read_text()


def _define(name: str) -> int:
    return int(re.search(rf"^#define {name} (\d+)$", _SOURCE, flags=re.M).group(1))


T, B, CHUNK = _define("ADAM_MAX_TENSORS"), _define("ADAM_MAX_BLOCKS"), _define("ADAM_CHUNK")
U64s, I64s = ctypes.c_uint64 * T, ctypes.c_int64 * T


class AdamBatch(ctypes.Structure):
    _fields_ = [
        *[(n, U64s) for n in ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")],
        ("numel", I64s),
        ("host_step", ctypes.c_double * T),
        ("step_kind", ctypes.c_uint8 * T),
        ("bump", ctypes.c_uint8 * T),
        ("block_tensor", ctypes.c_uint16 * B),
        ("block_chunk", ctypes.c_uint32 * B),
    ]


class AdamHyper(ctypes.Structure):
    _fields_ = [
        *[(n, ctypes.c_double) for n in ("lr", "beta1", "beta2", "eps", "weight_decay")],
        ("grad_scale", ctypes.c_uint64),
        ("found_inf", ctypes.c_uint64),
        *[(n, ctypes.c_int32) for n in ("amsgrad", "maximize", "decoupled", "n_tensors")],
    ]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++ to build the host emulation")
    so = tmp_path_factory.mktemp("emu") / "adam_emulation.so"
    subprocess.run(
        [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-o", str(so), str(HERE / "adam_emulation.cpp")],
        check=True,
    )
    lib = ctypes.CDLL(str(so))
    lib.batch_size.restype = ctypes.c_uint64
    assert lib.batch_size() == ctypes.sizeof(AdamBatch)
    return lib


def _step(lib, tensors, steps, hyper, dtype_code, max_blocks=B):
    """Plans launches like crates/bigmodel-cuda/src/adam.rs (a tensor may continue in the next)."""
    batch, n_t, n_b = AdamBatch(), 0, 0
    launches = []
    for (p, g, m, v, vm), s in zip(tensors, steps, strict=True):
        chunks, nxt, first = -(-p.numel() // CHUNK), 0, True
        while True:
            if n_t == T or (n_b == max_blocks and nxt < chunks):
                launches.append((batch, n_t, n_b))
                batch, n_t, n_b = AdamBatch(), 0, 0
            for name, t in zip(("param", "grad", "exp_avg", "exp_avg_sq"), (p, g, m, v), strict=True):
                getattr(batch, name)[n_t] = t.data_ptr()
            batch.max_exp_avg_sq[n_t] = 0 if vm is None else vm.data_ptr()
            batch.numel[n_t] = p.numel()
            batch.step[n_t], batch.step_kind[n_t], batch.bump[n_t] = s.data_ptr(), 1, int(first)
            first = False
            while nxt < chunks and n_b < max_blocks:
                batch.block_tensor[n_b], batch.block_chunk[n_b] = n_t, nxt
                n_b, nxt = n_b + 1, nxt + 1
            n_t += 1
            if nxt == chunks:
                break
    launches.append((batch, n_t, n_b))
    for batch, n_t, n_b in launches:
        hyper.n_tensors = n_t
        lib.launch(ctypes.byref(batch), ctypes.byref(hyper), n_b, dtype_code)


DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# Shapes: scalar, empty, tails of 1..3 after the 4-wide loop, 3 chunks (131075 elements).
SHAPES = [(), (0,), (1,), (7,), (33, 17), (65536 * 2 + 3,)] + [(100 + i,) for i in range(40)]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(
    "ams,maximize,wd,decoupled",
    [(False, False, 0.0, False), (True, True, 0.1, False), (True, False, 0.1, True)],
)
@pytest.mark.parametrize("amp", [False, True])
def test_kernel_matches_torch(kernels, dtype, ams, maximize, wd, decoupled, amp):
    base = [torch.randn(s, dtype=dtype) for s in SHAPES]
    ours = [p.clone() for p in base]
    ref_p = [torch.nn.Parameter(p.float()) for p in base]
    state = [[torch.zeros_like(p) for _ in range(3)] for p in ours]
    steps = [torch.zeros((), dtype=torch.float32) for _ in ours]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = cls(
        ref_p, lr=1e-2, betas=(0.9, 0.99), weight_decay=wd, amsgrad=ams, maximize=maximize, foreach=False
    )
    scale, found_inf = torch.tensor(64.0), torch.tensor(0.0)
    hyper = AdamHyper(
        1e-2, 0.9, 0.99, 1e-8, wd, scale.data_ptr() if amp else 0, found_inf.data_ptr() if amp else 0
    )
    hyper.amsgrad, hyper.maximize, hyper.decoupled = ams, maximize, decoupled
    for k in range(5):
        grads = [torch.randn_like(p) for p in ours]
        overflow = amp and k == 2
        found_inf.fill_(1.0 if overflow else 0.0)
        fed = [(g.float() * 64).to(dtype) for g in grads] if amp else [g.clone() for g in grads]
        tensors = [
            (p, g, m, v, vm if ams else None) for p, g, (m, v, vm) in zip(ours, fed, state, strict=True)
        ]
        # Small max_blocks: the 3-chunk tensor continues across launches, the bump happens once.
        _step(kernels, tensors, steps, hyper, DTYPES[dtype], max_blocks=2)
        if overflow:
            continue
        for q, g in zip(ref_p, grads, strict=True):
            q.grad = g.float()
        ref.step()
        if amp:  # the unscaled gradient is written back
            for g_ours, g in zip(fed, grads, strict=True):
                torch.testing.assert_close(g_ours.float(), g.float(), atol=0, rtol=1e-2)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for p, q in zip(ours, ref_p, strict=True):
        torch.testing.assert_close(p.float(), q.detach().to(dtype).float(), **tol)
    for (m, v, _), q in zip(state, ref_p, strict=True):
        torch.testing.assert_close(m.float(), ref.state[q]["exp_avg"].to(dtype).float(), **tol)
        torch.testing.assert_close(v.float(), ref.state[q]["exp_avg_sq"].to(dtype).float(), **tol)
    assert [float(s) for s in steps] == [4.0 if amp else 5.0] * len(steps)


def test_unaligned_tensors_take_the_scalar_path(kernels):
    """Offsets by one element break the 16-byte alignment: the kernel must still be exact."""
    big = torch.randn(4 * 1001)
    p, g = big[1:1001], torch.randn(4 * 1001)[1:1001]
    m, v = torch.zeros(4 * 1001)[1:1001], torch.zeros(4 * 1001)[1:1001]
    q = torch.nn.Parameter(p.clone())
    q.grad = g.clone()
    step = torch.zeros(())
    hyper = AdamHyper(0.1, 0.9, 0.999, 1e-8, 0.0, 0, 0)
    _step(kernels, [(p, g, m, v, None)], [step], hyper, 0)
    torch.optim.Adam([q], lr=0.1, foreach=False).step()
    torch.testing.assert_close(p, q.detach(), atol=1e-6, rtol=1e-6)
    assert float(step) == 1.0
