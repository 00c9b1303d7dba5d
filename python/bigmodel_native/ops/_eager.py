"""When an op's Python kernel may be called directly instead of through torch's dispatcher."""

from __future__ import annotations

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


def plain_eager() -> bool:
    """Plain eager mode: not compiling, no dispatch mode, no functorch transform."""
    return not (_compiling() or _dispatch_modes() > 0 or _functorch_active())
