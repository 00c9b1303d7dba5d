"""bigmodel_native: PyTorch training kernels written in Rust.

Swap one import and keep the rest of your code::

    from bigmodel_native.optim import AdamW

Every kernel is a torch custom op (``torch.ops.bigmodel_native.*``) with a fake kernel, so it
also works under torch.compile and ``torch.library.opcheck``.
"""

from __future__ import annotations

# torch first: the extension looks up torch's OpenMP runtime when it is loaded (it parks that
# team during kernel calls, see crates/bigmodel-kernels/src/openmp.rs).
import torch  # noqa: F401

from . import _native
from ._threads import get_num_threads, set_num_threads

__version__: str = _native.__version__

# Importing ops registers the custom ops with torch.
from . import nn, ops, optim  # noqa: E402

__all__ = ["__version__", "get_num_threads", "nn", "ops", "optim", "set_num_threads", "cpu_isa"]


def cpu_isa() -> str:
    """The SIMD instruction set the CPU kernels run on this machine ("avx512", "avx2" or "scalar")."""
    return _native.active_isa()
