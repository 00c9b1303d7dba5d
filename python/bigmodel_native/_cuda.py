"""The CUDA side of bigmodel_native: library loading, availability, and the cross-entropy launchers.

The CUDA kernels (crates/bigmodel-cuda) are CUDA C compiled at first use by NVRTC for the device's
own architecture and launched on torch's current stream with torch's memory; nothing is copied to
the host and nothing synchronises. The extension opens libcuda and libnvrtc at run time by soname,
so it imports on machines without CUDA; this module first preloads the libnvrtc that torch's CUDA
wheel ships (site-packages ``nvidia/cu13/lib`` for CUDA 13, ``nvidia/cuda_nvrtc/lib`` for CUDA 12)
with ``RTLD_GLOBAL``, so that the soname lookup finds torch's own, pinned NVRTC; likewise torch's
libcublas / libcublasLt (conv2d's GEMMs), from ``nvidia/cu13/lib`` or ``nvidia/cublas/lib``.

Asking for a CUDA kernel where CUDA is unusable raises RuntimeError with the reason; it never
crashes the process.
"""

from __future__ import annotations

import ctypes
import glob
import os

import torch
from torch import Tensor

from . import _native

_NVRTC_DIRS = ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib")
_preloaded: list[str] = []


def _preload_nvrtc() -> list[str]:
    """Loads torch's libnvrtc (and its builtins) with RTLD_GLOBAL; returns the files loaded."""
    if _preloaded:
        return _preloaded
    roots = {os.path.dirname(os.path.dirname(torch.__file__))}
    for root in sorted(roots):
        for sub in _NVRTC_DIRS:
            d = os.path.join(root, sub)
            builtins = sorted(glob.glob(os.path.join(d, "libnvrtc-builtins.so.*")))
            main = sorted(glob.glob(os.path.join(d, "libnvrtc.so.*")))
            if not main:
                continue
            for path in builtins + main:
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    _preloaded.append(path)
                except OSError:
                    pass
            if _preloaded:
                return _preloaded
    return _preloaded


_preload_nvrtc()

_CUBLAS_DIRS = ("nvidia/cu13/lib", "nvidia/cublas/lib")


def _preload_cublas() -> list[str]:
    """Loads torch's libcublasLt and libcublas with RTLD_GLOBAL; returns the files loaded."""
    loaded: list[str] = []
    root = os.path.dirname(os.path.dirname(torch.__file__))
    for sub in _CUBLAS_DIRS:
        d = os.path.join(root, sub)
        lt = sorted(glob.glob(os.path.join(d, "libcublasLt.so.*")))
        main = sorted(glob.glob(os.path.join(d, "libcublas.so.*")))
        if not main:
            continue
        for path in lt + main:
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                loaded.append(path)
            except OSError:
                pass
        if loaded:
            break
    return loaded


_preloaded_cublas = _preload_cublas()


def cuda_available() -> bool:
    """Whether the CUDA kernels can run here (a driver and at least one device)."""
    return _native.cuda_available()


def require_cuda(what: str) -> None:
    """Raises RuntimeError, with the reason, unless a CUDA device can run the kernels."""
    reason = _native.cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"{what} needs CUDA, which bigmodel_native cannot use here: {reason}")


def nvrtc_version() -> tuple[int, int]:
    """The version of the NVRTC the kernels are compiled with (RuntimeError when absent)."""
    return _native.nvrtc_version()


def nvrtc_compile_check(arch: int, output: str = "ptx") -> dict[str, int]:
    """Compiles every kernel source for ``sm_<arch>`` without a GPU; {source: bytes of output}."""
    return _native.nvrtc_compile_check(arch, output)


_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_REDUCTIONS = ("none", "mean", "sum")


def _check_ce_args(
    input: Tensor, target: Tensor, weight: Tensor | None, reduction: str, label_smoothing: float
) -> tuple[int, int]:
    require_cuda("bigmodel_native's CUDA cross-entropy")
    if not input.is_cuda:
        raise RuntimeError(f"cross_entropy (CUDA kernel): input must be a CUDA tensor, got {input.device}")
    if input.dim() != 2:
        raise RuntimeError(
            f"cross_entropy (CUDA kernel): input must be 2-D (N, C), got shape {tuple(input.shape)}"
        )
    if input.dtype not in _DTYPES:
        raise TypeError(f"cross_entropy (CUDA kernel): unsupported dtype {input.dtype}")
    n, c = input.shape
    if target.dtype != torch.int64 or target.shape != (n,) or target.device != input.device:
        raise RuntimeError(
            f"cross_entropy (CUDA kernel): target must be int64 of shape ({n},) on {input.device}, got "
            f"{target.dtype} {tuple(target.shape)} on {target.device}"
        )
    if weight is not None and (
        weight.shape != (c,) or weight.dtype != input.dtype or weight.device != input.device
    ):
        raise RuntimeError(
            f"cross_entropy (CUDA kernel): weight must be a {input.dtype} tensor of shape ({c},) "
            f"on {input.device}"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    return n, c


def cross_entropy_forward(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    error_flag: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Softmax cross-entropy forward on the GPU, queued on the current stream (no host sync).

    Args:
        input: logits, (N, C) CUDA tensor of float32 / bfloat16 / float16 (made contiguous).
        target: class indices, (N,) int64 on the same device.
        weight: optional per-class weights, (C,), same dtype and device as ``input``.
        ignore_index, reduction, label_smoothing: as ``torch.nn.functional.cross_entropy``.
        error_flag: optional int32 one-element CUDA tensor set to 1 when a target (other than
            ignore_index) lies outside [0, C); that row's loss is then NaN (torch raises a
            device-side assert instead). Never read here, so reading it is the caller's sync.

    Returns:
        ``(loss, lse, total_weight)``: loss in ``input.dtype`` (shape (N,) for 'none', a scalar
        otherwise); ``lse`` the fp32 log-sum-exp per row, which the backward needs; ``total_weight``
        the fp32 sum of the non-ignored rows' weights ('mean' / 'sum'; None for 'none').
    """
    n, c = _check_ce_args(input, target, weight, reduction, label_smoothing)
    x = input.contiguous()
    t = target.contiguous()
    w = None if weight is None else weight.contiguous()
    dev = x.device
    lse = torch.empty(n, device=dev, dtype=torch.float32)
    if reduction == "none":
        out = torch.empty(n, device=dev, dtype=x.dtype)
        row_loss = row_weight = total = None
    else:
        out = torch.empty((), device=dev, dtype=x.dtype)
        row_loss = torch.empty(n, device=dev, dtype=torch.float32)
        row_weight = torch.empty(n, device=dev, dtype=torch.float32)
        total = torch.empty((), device=dev, dtype=torch.float32)
    if error_flag is not None and (
        error_flag.dtype != torch.int32 or error_flag.numel() != 1 or error_flag.device != dev
    ):
        raise RuntimeError(
            "cross_entropy (CUDA kernel): error_flag must be a one-element int32 tensor on the input's device"
        )
    _native.cuda_cross_entropy_forward(
        dtype=_DTYPES[x.dtype],
        reduction=reduction,
        logits=x.data_ptr(),
        target=t.data_ptr(),
        weight=0 if w is None else w.data_ptr(),
        lse=lse.data_ptr(),
        row_loss=0 if row_loss is None else row_loss.data_ptr(),
        row_weight=0 if row_weight is None else row_weight.data_ptr(),
        out=out.data_ptr(),
        total_weight=0 if total is None else total.data_ptr(),
        error_flag=0 if error_flag is None else error_flag.data_ptr(),
        n_rows=n,
        n_classes=c,
        ignore_index=int(ignore_index),
        label_smoothing=float(label_smoothing),
        device=dev.index,
        stream=torch.cuda.current_stream(dev).cuda_stream,
    )
    return out, lse, total


def cross_entropy_backward(
    grad_output: Tensor,
    input: Tensor,
    target: Tensor,
    lse: Tensor,
    total_weight: Tensor | None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    inplace: bool = False,
) -> Tensor:
    """Gradient of :func:`cross_entropy_forward` with respect to ``input`` (no host sync).

    Args:
        grad_output: the loss's gradient, ``input.dtype``: shape (N,) for 'none', a scalar otherwise.
        input, target, weight, ignore_index, reduction, label_smoothing: as in the forward.
        lse, total_weight: the forward's second and third results.
        inplace: write the gradient over ``input`` (which must then be contiguous) and return it,
            saving a logits-sized allocation; the logits are destroyed.
    """
    n, c = _check_ce_args(input, target, weight, reduction, label_smoothing)
    if lse.dtype != torch.float32 or lse.shape != (n,) or lse.device != input.device:
        raise RuntimeError("cross_entropy_backward (CUDA kernel): lse must be the forward's fp32 (N,) result")
    if reduction == "mean" and (total_weight is None or total_weight.numel() != 1):
        raise RuntimeError("cross_entropy_backward (CUDA kernel): 'mean' needs the forward's total_weight")
    expected = (n,) if reduction == "none" else ()
    if grad_output.shape != expected:
        raise RuntimeError(
            f"cross_entropy_backward (CUDA kernel): grad_output must have shape {expected}, "
            f"got {tuple(grad_output.shape)}"
        )
    if inplace and not input.is_contiguous():
        raise RuntimeError("cross_entropy_backward (CUDA kernel): inplace=True needs a contiguous input")
    x = input.contiguous()
    t = target.contiguous()
    w = None if weight is None else weight.contiguous()
    g = grad_output.to(device=x.device, dtype=x.dtype).contiguous()
    grad_in = x if inplace else torch.empty_like(x)
    _native.cuda_cross_entropy_backward(
        dtype=_DTYPES[x.dtype],
        reduction=reduction,
        logits=x.data_ptr(),
        target=t.data_ptr(),
        weight=0 if w is None else w.data_ptr(),
        lse=lse.data_ptr(),
        grad_out=g.data_ptr(),
        total_weight=0 if total_weight is None or reduction != "mean" else total_weight.data_ptr(),
        grad_in=grad_in.data_ptr(),
        n_rows=n,
        n_classes=c,
        ignore_index=int(ignore_index),
        label_smoothing=float(label_smoothing),
        device=x.device.index,
        stream=torch.cuda.current_stream(x.device).cuda_stream,
    )
    if inplace:
        torch._C._increment_version(input)
    return grad_in
