"""CUDA kernel of ``bigmodel_native::adam_step_`` (the op and its CPU kernel live in ``adam.py``).

The step runs as fused multi-tensor CUDA launches (crates/bigmodel-cuda/kernels/adam.cu) on the
current stream, on torch's memory, with no host synchronisation when the step counters live on the
device (as torch's fused Adam keeps them, and as ``bigmodel_native.optim`` creates them for CUDA
parameters): then the counters are incremented on the stream, ``found_inf`` is read by the kernel,
and the whole step can be captured in a CUDA graph. Counters on the host (a state loaded from a
non-fused torch optimizer) are incremented on the host; with AMP's ``found_inf`` that costs one
read of the flag (a sync), which is refused during graph capture.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _cuda, _native
from . import adam as _adam  # defines the op before its CUDA kernel is registered
from ._library import LIB

_NAME = "adam_step_"


def _adam_step_cuda(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    _cuda.require_cuda(f"bigmodel_native::{_NAME} on CUDA tensors")
    if not params:
        return
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None and t.numel() != 1:
            raise RuntimeError(f"{_NAME}: {name} must have one element, got shape {tuple(t.shape)}")
    if found_inf is not None and any(not s.is_cuda for s in state_steps):
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{_NAME}: a step captured in a CUDA graph needs its step counters on the device "
                "(bigmodel_native.optim creates them there; move state['step'] to the parameter's device)"
            )
        if float(found_inf) == 1.0:
            return  # torch's fused semantics: an overflow skips the step, counters included
        found_inf = None
    lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps]
    hyper = dict(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        grad_scale=None if grad_scale is None else grad_scale.float(),
        found_inf=None if found_inf is None else found_inf.float(),
        stream=torch.cuda.current_stream(params[0].device).cuda_stream,
    )
    try:
        _native.cuda_adam_step(*lists, **hyper)
    except _native.NeedsStaging:
        _staged_step(lists, amsgrad, hyper)
    for lst in lists:
        torch._C._increment_version(lst)


def _staged_step(lists: list[list[Tensor]], amsgrad: bool, hyper: dict) -> None:
    """The same kernel on real, contiguous stand-ins, copied back afterwards (on the stream)."""
    tensor_lists = lists[:5] if amsgrad else lists[:4]
    staged: list[list[Tensor]] = [[] for _ in tensor_lists]
    writebacks: list[tuple[Tensor, Tensor]] = []
    for i in range(len(lists[0])):
        for k, lst in enumerate(tensor_lists):
            t = lst[i]
            real = torch.view_as_real(t) if t.is_complex() else t
            if not real.is_contiguous():
                copy = real.contiguous()
                writebacks.append((real, copy))
                real = copy
            staged[k].append(real)
    if not amsgrad:
        staged.append([])
    _native.cuda_adam_step(*staged, lists[5], **hyper)
    for original, copy in writebacks:
        original.copy_(copy)


_adam.KERNELS["cuda"] = _adam_step_cuda
LIB.impl(_NAME, _adam_step_cuda, "CUDA")
