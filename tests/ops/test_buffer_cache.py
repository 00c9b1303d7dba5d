"""The cached logits-sized gradient buffer (bigmodel_kernels::buffer_cache, handed over by DLPack).

A training step's cross-entropy gradient reuses the mapping the previous step released, keeps
torch's values, is given back by ``bigmodel_native.empty_cache()`` and is never shared by two
live tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys

import bigmodel_native
import pytest
import torch
import torch.nn.functional as F
from bigmodel_native import _native
from bigmodel_native.ops import cross_entropy

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the cache maps memory on Linux only"
)

SHAPE = (256, 8192)  # 8 MiB of float32: the cache's smallest size


def _step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x.grad = None
    cross_entropy(x, t, label_smoothing=0.1).backward()
    assert x.grad is not None
    return x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_each_step_reuses_the_released_gradient_and_keeps_torchs_values(dtype):
    bigmodel_native.empty_cache()
    size = torch.empty((), dtype=dtype).element_size()
    shape = (SHAPE[0] * 4 // size, SHAPE[1])  # 8 MiB whatever the dtype
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, shape[1], (shape[0],), generator=g)
    ptrs = []
    for _ in range(3):
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype).requires_grad_()
        grad = _step(x, t)
        ptrs.append(grad.data_ptr())
        xr = x.detach().double().requires_grad_()
        F.cross_entropy(xr, t, label_smoothing=0.1).backward()
        tol = dict(rtol=2e-2, atol=1e-4) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(grad.double(), xr.grad, **tol)
        assert grad.is_contiguous() and grad.shape == shape and grad.dtype == dtype
        del x, grad  # releases the buffer for the next step
    assert ptrs[0] == ptrs[1] == ptrs[2]
    assert _native.buffer_cache_bytes() >= shape[0] * shape[1] * size
    assert bigmodel_native.empty_cache() > 0
    assert _native.buffer_cache_bytes() == 0


def test_live_gradients_never_share_a_buffer():
    bigmodel_native.empty_cache()
    t = torch.randint(0, SHAPE[1], (SHAPE[0],))
    x1 = torch.randn(SHAPE, requires_grad=True)
    x2 = torch.randn(SHAPE, requires_grad=True)
    g1 = _step(x1, t)
    g2 = _step(x2, t)
    assert g1.data_ptr() != g2.data_ptr()
    x1r = x1.detach().requires_grad_()
    F.cross_entropy(x1r, t, label_smoothing=0.1).backward()
    torch.testing.assert_close(g1, x1r.grad)  # the second step did not overwrite the first


def test_a_capsule_nobody_consumed_goes_back_to_the_cache():
    bigmodel_native.empty_cache()
    capsule = _native.grad_buffer([SHAPE[0], SHAPE[1]], "float32")
    assert capsule is not None and _native.buffer_cache_bytes() == 0
    del capsule
    assert _native.buffer_cache_bytes() >= SHAPE[0] * SHAPE[1] * 4
    assert _native.grad_buffer([16, 16], "float32") is None  # small: the caller allocates
    with pytest.raises(ValueError, match="unsupported dtype"):
        _native.grad_buffer([4096, 4096], "int8")
    with pytest.raises(ValueError, match="invalid shape"):
        _native.grad_buffer([-1, 4096], "float32")
    with pytest.raises(ValueError, match="invalid shape"):
        _native.grad_buffer([2**62, 2**62], "float32")


def test_the_environment_variable_turns_the_cache_off():
    code = (
        "import torch, bigmodel_native\n"
        "from bigmodel_native import _native\n"
        "from bigmodel_native.ops import cross_entropy\n"
        f"x = torch.randn({SHAPE}, requires_grad=True)\n"
        f"cross_entropy(x, torch.zeros({SHAPE[0]}, dtype=torch.long)).backward()\n"
        "x.grad = None\n"
        "print(_native.buffer_cache_bytes())\n"
    )
    env = {**os.environ, "BIGMODEL_NATIVE_NO_BUFFER_CACHE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
