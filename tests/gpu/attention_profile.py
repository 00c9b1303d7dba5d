"""One forward + backward of the benchmark shape, for Nsight Compute (not a pytest module).

ncu --kernel-name regex:'attn_(fwd|bwd)_mma' --launch-count 2 python tests/gpu/attention_profile.py
"""

from __future__ import annotations

import torch
from bigmodel_native.ops import scaled_dot_product_attention as sdpa

if __name__ == "__main__":
    q, k, v = (
        torch.randn(4, 16, 4096, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    sdpa(q, k, v).backward(torch.ones_like(q))
    torch.cuda.synchronize()
