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


_CONV = dict(
    input_shape=(2, 3, 9, 8), weight_shape=(4, 3, 3, 3), stride=(1, 1), padding=(1, 1, 1, 1),
    dilation=(1, 1), groups=1,
)  # fmt: skip


def test_conv2d_plan_needs_no_gpu():
    oh, ow, chunk, col, gather, slices = _native.cuda_conv2d_plan(**_CONV, budget_bytes=1 << 30)
    assert (oh, ow, chunk) == (9, 8, 2)
    assert col == 3 * 9 * 2 * 72 and gather == 4 * 2 * 72 and slices >= 1
    # A budget of one image's fp32 column matrix: one image per pass.
    assert _native.cuda_conv2d_plan(**_CONV, budget_bytes=3 * 9 * 72 * 4)[2] == 1
    with pytest.raises(ValueError, match="groups"):
        _native.cuda_conv2d_plan(**{**_CONV, "groups": 2}, budget_bytes=1 << 30)


def test_conv2d_launchers_raise_instead_of_crashing():
    buf = dict(
        col=0x10000, col_bytes=1 << 20, workspace=0, ws_bytes=0, chunk=2, tf32=False, device=0, stream=0
    )
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _native.cuda_conv2d_forward(
            dtype="float32", **_CONV, x=0x1000, weight=0x2000, bias=0, out=0x3000, tmp=0x40000,
            tmp_bytes=1 << 20, **buf,
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _native.cuda_conv2d_backward(
            dtype="bfloat16", **_CONV, grad_out=0x1000, x=0x2000, weight=0x3000, grad_x=0x4000,
            grad_weight=0x5000, grad_weight_acc=0x6000, grad_bias=0, partial=0, gather=0x40000,
            gather_bytes=1 << 20, **buf,
        )  # fmt: skip
    with pytest.raises(ValueError, match="column buffer"):
        _native.cuda_conv2d_forward(
            dtype="float32", **_CONV, x=0x1000, weight=0x2000, bias=0, out=0x3000, tmp=0x40000,
            tmp_bytes=1 << 20, **{**buf, "col_bytes": 16},
        )  # fmt: skip


def test_conv2d_has_a_cuda_kernel_and_cpu_is_unaffected():
    for op in ("bigmodel_native::conv2d", "bigmodel_native::conv2d_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(bn.ops.conv2d(x, w), torch.nn.functional.conv2d(x, w))


def test_attention_launchers_raise_instead_of_crashing():
    shape = (2, 4, 2, 33, 40, 64, 64)
    assert _native.cuda_attention_path("bfloat16", shape) == ("mma", 64)
    assert _native.cuda_attention_path("float32", shape) == ("simt", 0)
    assert _native.cuda_attention_path("float16", (2, 4, 2, 33, 40, 96, 96)) == ("simt", 0)
    common = dict(
        mask=0, mask_kind="none", mask_dims=(1, 1, 1, 1), shape=shape, scale=0.125, causal=False,
        dropout_p=0.0, seed=0, device=0, stream=0,
    )  # fmt: skip
    fwd = dict(q=0x1000, k=0x2000, v=0x3000, out=0x4000, lse=0x5000)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _native.cuda_attention_forward(dtype="bfloat16", **fwd, **common)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _native.cuda_attention_backward(
            dtype="float16", **fwd, dout=0x6000, delta=0x7000, dq_acc=0x8000, dq=0x9000, dk=0xA000,
            dv=0xB000, **common,
        )  # fmt: skip
    # Bad arguments are refused before the environment is looked at.
    with pytest.raises(ValueError, match="null device pointer"):
        _native.cuda_attention_forward(dtype="bfloat16", **{**fwd, "lse": 0}, **common)
    with pytest.raises(ValueError, match="not aligned"):
        _native.cuda_attention_forward(dtype="bfloat16", **{**fwd, "q": 0x1008}, **common)
    with pytest.raises(ValueError, match="dropout"):
        _native.cuda_attention_forward(dtype="float32", **fwd, **{**common, "dropout_p": 1.0})
    with pytest.raises(ValueError, match="must divide"):
        _native.cuda_attention_forward(dtype="float32", **fwd, **{**common, "shape": (2, 4, 3, 33, 40, 8, 8)})
    with pytest.raises(TypeError, match="unsupported dtype"):
        _native.cuda_attention_forward(dtype="float64", **fwd, **common)


def test_attention_cuda_kernel_needs_cuda():
    from bigmodel_native.ops import attention_cuda

    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        attention_cuda._sdpa_flash_cuda(q, q, q, None, 0.3, False, 0.0, 0)
