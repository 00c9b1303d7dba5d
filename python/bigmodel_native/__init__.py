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

__all__ = [
    "__version__",
    "cpu_isa",
    "empty_cache",
    "get_num_threads",
    "nn",
    "ops",
    "optim",
    "set_num_threads",
]


def cpu_isa() -> str:
    """The SIMD instruction set the CPU kernels run on this machine ("avx512", "avx2" or "scalar")."""
    return _native.active_isa()


def empty_cache() -> int:
    """Gives the cached gradient buffer back to the system now; returns the bytes released.

    Cross-entropy keeps the last released logits-sized gradient buffer (one at most) for the
    next training step, as torch's CUDA caching allocator does, so that each step does not fault
    in and zero fresh pages. While cached its pages are already reclaimable by the system under
    memory pressure; this unmaps them at once (say, before a long evaluation). Setting
    ``BIGMODEL_NATIVE_NO_BUFFER_CACHE=1`` before import turns the cache off.
    """
    return _native.release_buffer_cache()
