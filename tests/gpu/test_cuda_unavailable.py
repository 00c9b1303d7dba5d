"""Without a usable GPU, the package imports and every CUDA entry point raises a clear error."""

from __future__ import annotations

import bigmodel_native as bn
import pytest
import torch
from bigmodel_native import _cuda, _native

pytestmark = pytest.mark.skipif(_native.cuda_available(), reason="a CUDA device is present")


def test_import_and_report():
    assert bn.__version__
    assert _cuda.cuda_available() is False
    reason = _native.cuda_unavailable_reason()
    assert isinstance(reason, str) and "CUDA" in reason


def test_require_cuda_raises_runtime_error():
    with pytest.raises(RuntimeError, match="needs CUDA"):
        _cuda.require_cuda("this test")


def test_cross_entropy_entry_points_raise():
    x, t = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="needs CUDA"):
        _cuda.cross_entropy_forward(x, t)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        _cuda.cross_entropy_backward(torch.tensor(1.0), x, t, torch.zeros(4), torch.tensor(4.0))


def test_raw_launchers_raise_instead_of_crashing():
    """Made-up device addresses never reach the driver: the missing driver is reported first."""
    common = dict(n_rows=4, n_classes=5, ignore_index=-100, label_smoothing=0.0, device=0, stream=0)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _native.cuda_cross_entropy_forward(
            dtype="float32", reduction="none", logits=0x1000, target=0x2000, weight=0, lse=0x3000,
            row_loss=0, row_weight=0, out=0x4000, total_weight=0, error_flag=0, **common,
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _native.cuda_cross_entropy_backward(
            dtype="bfloat16", reduction="sum", logits=0x1000, target=0x2000, weight=0, lse=0x3000,
            grad_out=0x4000, total_weight=0, grad_in=0x1000, **common,
        )  # fmt: skip
    # Bad arguments are refused before the environment is even looked at.
    with pytest.raises(ValueError, match="null device pointer"):
        _native.cuda_cross_entropy_forward(
            dtype="float32", reduction="mean", logits=0x1000, target=0x2000, weight=0, lse=0x3000,
            row_loss=0, row_weight=0, out=0x4000, total_weight=0, error_flag=0, **common,
        )  # fmt: skip
    with pytest.raises(TypeError, match="unsupported dtype"):
        _native.cuda_cross_entropy_forward(
            dtype="float64", reduction="none", logits=0x1000, target=0x2000, weight=0, lse=0x3000,
            row_loss=0, row_weight=0, out=0x4000, total_weight=0, error_flag=0, **common,
        )  # fmt: skip


def test_adam_launcher_refuses_cpu_tensors():
    p = [torch.zeros(3)]
    with pytest.raises(RuntimeError, match="not a CUDA tensor"):
        _native.cuda_adam_step(
            p, [torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [], [torch.zeros(())],
            lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
            amsgrad=False, maximize=False, grad_scale=None, found_inf=None, stream=0,
        )  # fmt: skip
    assert torch.equal(p[0], torch.zeros(3))


def test_cpu_optimizer_unaffected():
    """The CUDA registration leaves the CPU path alone (CPU step counters, CPU kernel)."""
    w = torch.nn.Parameter(torch.ones(4))
    opt = bn.optim.AdamW([w], lr=0.1)
    w.grad = torch.ones(4)
    opt.step()
    assert opt.state[w]["step"].device.type == "cpu"
    assert float(opt.state[w]["step"]) == 1.0
    assert torch.all(w < 1)
