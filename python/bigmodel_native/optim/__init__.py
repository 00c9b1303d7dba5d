"""Drop-in optimizers: ``from bigmodel_native.optim import Adam, AdamW``."""

from __future__ import annotations

from .adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
