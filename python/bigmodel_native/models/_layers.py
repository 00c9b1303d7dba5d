"""The one place the seed models take their building blocks from.

Each name is bigmodel_native's own implementation when the package has it (``bigmodel_native.nn``
/ ``bigmodel_native.ops``), else torch's. :data:`IMPLEMENTATIONS` records which one each name
resolved to and why, so that the CLI and the benchmarks can say honestly what ran; nothing here
presents torch's kernel as ours.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F

#: name -> "bigmodel_native" or "torch (<reason>)".
IMPLEMENTATIONS: dict[str, str] = {}


def _resolve(name: str, module: str, fallback: Any) -> Any:
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        reason = "bigmodel_native kernel not available"
        if not isinstance(exc, ModuleNotFoundError) and not isinstance(exc, AttributeError):
            reason += f": {exc}"
        IMPLEMENTATIONS[name] = f"torch ({reason})"
        return fallback
    IMPLEMENTATIONS[name] = "bigmodel_native"
    return obj


Conv2d = _resolve("Conv2d", "bigmodel_native.nn", torch.nn.Conv2d)
MaxPool2d = _resolve("MaxPool2d", "bigmodel_native.nn", torch.nn.MaxPool2d)
CrossEntropyLoss = _resolve("CrossEntropyLoss", "bigmodel_native.nn", torch.nn.CrossEntropyLoss)
MultiheadAttention = _resolve("MultiheadAttention", "bigmodel_native.nn", torch.nn.MultiheadAttention)
cross_entropy = _resolve("cross_entropy", "bigmodel_native.ops", F.cross_entropy)
scaled_dot_product_attention = _resolve(
    "scaled_dot_product_attention", "bigmodel_native.ops", F.scaled_dot_product_attention
)

conv2d_relu = _resolve("conv2d_relu", "bigmodel_native.ops", None)
conv2d_relu_max_pool2d = _resolve("conv2d_relu_max_pool2d", "bigmodel_native.ops", None)
for _name, _modules in (
    ("conv2d_relu", "Conv2d, ReLU"),
    ("conv2d_relu_max_pool2d", "Conv2d, ReLU, MaxPool2d(2)"),
):
    if IMPLEMENTATIONS[_name] == "bigmodel_native":
        IMPLEMENTATIONS[_name] = f"bigmodel_native on CPU (on other devices {_modules} run one by one)"
    else:
        IMPLEMENTATIONS[_name] = f"not used: {_modules} run one by one"

if IMPLEMENTATIONS["MaxPool2d"] == "bigmodel_native":
    # Its kernel is CPU-only; the module itself runs torch's pooling on other devices.
    IMPLEMENTATIONS["MaxPool2d"] = "bigmodel_native on CPU (torch's on other devices)"

#: The optimizers are always ours (they exist since the foundation).
IMPLEMENTATIONS["Adam"] = "bigmodel_native"
IMPLEMENTATIONS["AdamW"] = "bigmodel_native"


def _hooked(module: torch.nn.Module) -> bool:
    """Whether a module has hooks that fusing would skip (forward or backward, pre or post)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module as nn_module

    return bool(
        nn_module._global_forward_hooks
        or nn_module._global_forward_pre_hooks
        or nn_module._global_backward_hooks
        or nn_module._global_backward_pre_hooks
    )


def _is_pool2(m: object) -> bool:
    """A 2x2, stride-2, unpadded, floor-mode max pooling that returns no indices (torch's module
    or ours, not a subclass that might compute something else)."""
    if type(m) not in (torch.nn.MaxPool2d, MaxPool2d) or _hooked(m):
        return False
    pair = torch.nn.modules.utils._pair
    return (
        pair(m.kernel_size) == (2, 2)
        and pair(m.stride) == (2, 2)
        and pair(m.padding) == (0, 0)
        and pair(m.dilation) == (1, 1)
        and not m.ceil_mode
        and not m.return_indices
    )


def run_sequential(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``seq(x)``, with every (our ``Conv2d``, ``nn.ReLU``, ``MaxPool2d(2)``) triple run as one
    :func:`conv2d_relu_max_pool2d` call and every other (``Conv2d``, ``ReLU``) pair as one
    :func:`conv2d_relu` call, on CPU: the same values, bit for bit, and the same gradients (up to
    the order of their sums where an odd-sized output is pooled), without the full-size
    activation's extra passes over memory.

    The modules, their parameters and the ``state_dict`` stay exactly those of the plain stack.
    Where fusing would change what a user observes, the stack runs module by module: hooks
    (forward or backward) on the container or on a fused module, which would not fire, global
    module hooks, subclasses of the fused modules, a ``padding_mode`` other than ``"zeros"``, a
    tensor not on the CPU.
    """
    if conv2d_relu is None or _hooked(seq) or _global_hooks() or x.device.type != "cpu":
        return seq(x)
    mods = list(seq)
    i = 0
    while i < len(mods):
        conv, nxt, third = (mods[i : i + 3] + [None, None])[:3]
        fusable = (
            type(conv) is Conv2d  # ours exactly: a subclass may compute something else
            and Conv2d is not torch.nn.Conv2d
            and type(nxt) is torch.nn.ReLU
            and conv.padding_mode == "zeros"
            and not (_hooked(conv) or _hooked(nxt))
        )
        if not fusable:
            x = conv(x)
            i += 1
            continue
        args = (conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if conv2d_relu_max_pool2d is not None and _is_pool2(third):
            x = conv2d_relu_max_pool2d(x, *args)
            i += 3
        else:
            x = conv2d_relu(x, *args)
            i += 2
    return x


def describe() -> list[str]:
    """One line per building block, e.g. ``"Conv2d: torch (bigmodel_native kernel not available)"``."""
    return [f"{name}: {impl}" for name, impl in IMPLEMENTATIONS.items()]


__all__ = [
    "IMPLEMENTATIONS",
    "Conv2d",
    "CrossEntropyLoss",
    "MaxPool2d",
    "MultiheadAttention",
    "conv2d_relu",
    "conv2d_relu_max_pool2d",
    "cross_entropy",
    "describe",
    "run_sequential",
    "scaled_dot_product_attention",
]
