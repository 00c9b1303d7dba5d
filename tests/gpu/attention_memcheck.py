"""A small run of every CUDA attention kernel, for compute-sanitizer (not a pytest module).

compute-sanitizer --tool memcheck python tests/gpu/attention_memcheck.py
"""

from __future__ import annotations

import torch
from bigmodel_native.ops import scaled_dot_product_attention as sdpa


def main() -> None:
    dev = "cuda"
    torch.manual_seed(0)
    cases = [
        (torch.bfloat16, 64, dict(is_causal=True)),
        (torch.float16, 128, dict()),
        (torch.bfloat16, 128, dict(dropout_p=0.2)),
        (torch.float32, 40, dict(attn_mask=torch.rand(77, 90, device=dev) > 0.3)),
        (torch.bfloat16, 64, dict(attn_mask=torch.randn(1, 90, device=dev))),
    ]
    for dtype, d, kw in cases:
        q = torch.randn(2, 4, 77, d, device=dev, dtype=dtype, requires_grad=True)
        k = torch.randn(2, 2, 90, d, device=dev, dtype=dtype, requires_grad=True)
        v = torch.randn(2, 2, 90, d, device=dev, dtype=dtype, requires_grad=True)
        out = sdpa(q, k, v, enable_gqa=True, **kw)
        out.float().sum().backward()
    torch.cuda.synchronize()
    print("attention memcheck run: ok")


if __name__ == "__main__":
    main()
