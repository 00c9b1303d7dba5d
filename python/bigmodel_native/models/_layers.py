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

if IMPLEMENTATIONS["MaxPool2d"] == "bigmodel_native":
    # Its kernel is CPU-only; the module itself runs torch's pooling on other devices.
    IMPLEMENTATIONS["MaxPool2d"] = "bigmodel_native on CPU (torch's on other devices)"

#: The optimizers are always ours (they exist since the foundation).
IMPLEMENTATIONS["Adam"] = "bigmodel_native"
IMPLEMENTATIONS["AdamW"] = "bigmodel_native"


def describe() -> list[str]:
    """One line per building block, e.g. ``"Conv2d: torch (bigmodel_native kernel not available)"``."""
    return [f"{name}: {impl}" for name, impl in IMPLEMENTATIONS.items()]


__all__ = [
    "IMPLEMENTATIONS",
    "Conv2d",
    "CrossEntropyLoss",
    "MaxPool2d",
    "MultiheadAttention",
    "cross_entropy",
    "describe",
    "scaled_dot_product_attention",
]
