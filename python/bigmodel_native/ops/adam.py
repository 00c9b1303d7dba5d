"""``bigmodel_native::adam_step_``: one fused Adam/AdamW step over a whole parameter group.

The op mutates params, grads (only when AMP's ``grad_scale`` unscales them), the optimizer state
and the step counters in place, and returns nothing. It mirrors ``torch._fused_adam_``: one call
per group, the step counters incremented inside, ``found_inf`` skipping the step entirely.

It is defined with ``torch.library.Library`` rather than ``custom_op``: with thousands of
parameters in a group, ``custom_op``'s Python-level wrappers cost more than the kernel itself.
The schema still declares every mutated list, and the kernel bumps their version counters as
torch's own in-place ops do.

Validation happens in Rust, tensor by tensor, before anything is written. Complex tensors (torch
updates them as real views) and non-contiguous ones take a staged path: real, contiguous
stand-ins go through the same kernel and are copied back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import _native
from .._threads import get_num_threads
from ._eager import skips_dispatcher
from ._library import LIB

_NAME = "adam_step_"
LIB.define(
    "adam_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
    "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, float lr, float beta1, float beta2, "
    "float weight_decay, float eps, bool amsgrad, bool maximize, bool decoupled_weight_decay, "
    "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()"
)


def adam_step_(
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
    """Fused Adam (``decoupled_weight_decay=False``) or AdamW step; see the module docstring."""
    kernel = KERNELS.get(params[0].device.type) if params else None
    if kernel is not None and skips_dispatcher(*params, *grads):
        kernel(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
            weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, grad_scale, found_inf,
        )  # fmt: skip
        return
    torch.ops.bigmodel_native.adam_step_(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
        weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, grad_scale, found_inf,
    )  # fmt: skip


def _adam_step_cpu(
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
    if found_inf is not None:
        if found_inf.numel() != 1:
            raise RuntimeError(
                f"{_NAME}: found_inf must have one element, got shape {tuple(found_inf.shape)}"
            )
        if float(found_inf) == 1.0:
            return  # torch's fused semantics: an overflow skips the step, counters included
    if grad_scale is not None and grad_scale.numel() != 1:
        raise RuntimeError(f"{_NAME}: grad_scale must have one element, got shape {tuple(grad_scale.shape)}")
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
        grad_scale=None if grad_scale is None else float(grad_scale),
        num_threads=get_num_threads(),
    )
    try:
        _native.adam_step(*lists, **hyper)
    except _native.NeedsStaging:
        _staged_step(lists, amsgrad, hyper)
    for lst in lists:
        torch._C._increment_version(lst)


def _staged_step(lists: list[list[Tensor]], amsgrad: bool, hyper: dict) -> None:
    """The same kernel on real, contiguous stand-ins, copied back afterwards."""
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
    _native.adam_step(*staged, lists[5], **hyper)
    for original, copy in writebacks:
        original.copy_(copy)


def _adam_step_fake(*args: object, **kwargs: object) -> None:
    return None


#: device type -> the kernel registered for it (adam_cuda.py adds "cuda").
KERNELS: dict[str, Callable[..., None]] = {"cpu": _adam_step_cpu}
LIB.impl(_NAME, _adam_step_cpu, "CPU")
torch.library.register_fake(f"bigmodel_native::{_NAME}", _adam_step_fake, lib=LIB)
