"""When an op's Python kernel may be called directly instead of through torch's dispatcher."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Tensor types the dispatcher treats as plain tensors (no ``__torch_dispatch__`` of their own).
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active


def skips_dispatcher(*tensors: Tensor | None) -> bool:
    """Whether calling a kernel directly is what the dispatcher would do anyway.

    Each trip through the dispatcher into a Python kernel costs tens of microseconds (and, with
    lists of thousands of tensors, a conversion of every one). In plain eager mode on plain tensors
    the dispatcher routes to the kernel registered for the device; under ``torch.compile``, a
    dispatch mode (fake tensors, functionalization), functorch transforms or tensor subclasses the
    registered ops must be used.
    """
    if not plain_eager():
        return False
    for t in tensors:  # a loop, not all(<generator>): this runs on every small call
        if t is not None and type(t) not in PLAIN_TENSORS:
            return False
    return True


def mark_auxiliary_outputs(ctx, *outputs: Tensor) -> None:
    """Marks ``outputs`` (an op's indices or statistics) non-differentiable and turns off the
    zero gradients autograd would otherwise fill in for them on every backward (an indices-sized
    fill, and the page faults of its fresh memory): the op's backward then receives None for
    those outputs, and for its first one when nothing flows back at all."""
    ctx.mark_non_differentiable(*outputs)
    ctx.set_materialize_grads(False)


def plain_eager() -> bool:
    """Plain eager mode: not compiling, no dispatch mode, no functorch transform."""
    return not (_compiling() or _dispatch_modes() > 0 or _functorch_active())


def eager_function(
    name: str, kernel: Callable, setup_context: Callable, backward: Callable
) -> type[torch.autograd.Function]:
    """An op's autograd, entered directly in plain eager mode on CPU tensors.

    torch.library's generic autograd wrapper costs tens of microseconds per call, more than a
    small convolution or pooling; this Function runs the op's CPU implementation (``kernel``),
    context logic and backward as registered. Callers use it only where
    :func:`skips_dispatcher` holds; the registered op serves every other mode (torch.compile,
    fake tensors, functorch, subclasses, CUDA). ``name`` names it (its node is ``<name>Backward``).
    """

    def forward(ctx, *args: object) -> object:
        out = kernel(*args)
        setup_context(ctx, args, out)
        return out

    body = {"forward": staticmethod(forward), "backward": staticmethod(backward), "__doc__": f"``{name}``"}
    return type(name, (torch.autograd.Function,), body)
