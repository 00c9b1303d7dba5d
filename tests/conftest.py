"""Shared fixtures: every test starts from the same seed and the detected instruction set."""

from __future__ import annotations

import pytest
import torch
from bigmodel_native import _native


@pytest.fixture(autouse=True)
def _seed_and_isa():
    torch.manual_seed(0)
    yield
    _native.set_isa(None)


def available_isas() -> list[str]:
    """Every instruction set this CPU can run, narrowest first."""
    order = ["scalar", "avx2", "avx512"]
    return order[: order.index(_native.detected_isa()) + 1]
