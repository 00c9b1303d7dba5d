"""The ``bigmodel_native`` operator namespace shared by every op module."""

from __future__ import annotations

import torch

#: Owner of every op this package defines; kept alive for the life of the process.
LIB = torch.library.Library("bigmodel_native", "DEF")
