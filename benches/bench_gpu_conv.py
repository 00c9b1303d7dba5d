"""GPU benchmark of conv2d (issue 8): bigmodel_native's CUDA conv2d (im2col + cuBLAS) against torch's
(cuDNN), torch and ours in one process, interleaved.

Skipped without a CUDA device. The shapes are the seed CNNs' three convolutions (S3 MNIST 28x28x1
and S4 CIFAR-10 32x32x3: Conv(c->32, 3x3), Conv(32->64, 3x3), Conv(64->64, 3x3), valid padding,
after 2x2 pooling) at batch 64 and 512, fp32 (TF32 as torch's default ``cudnn.allow_tf32`` allows,
for both) and bf16, forward alone and forward + backward (``torch.autograd.grad`` for input, weight
and bias). Each case is timed two ways with CUDA events, median of ``ROUNDS`` interleaved rounds of
``REPS`` calls: eagerly (host work included: at these sizes that is most of the time) and as
CUDA-graph replays (the GPU work alone). Ratios are torch's time over ours (>= 1: ours is faster);
the target is >= 0.8 on the network totals.

Results: benches/results/gpu-conv2d.json (device name, torch version, every case, the totals).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
ROUNDS = 15
REPS = 10
TARGET = 0.8

# (network, layer, in channels, side of the layer's input, out channels)
LAYERS = [
    ("mnist", "conv1", 1, 28, 32),
    ("mnist", "conv2", 32, 13, 64),
    ("mnist", "conv3", 64, 5, 64),
    ("cifar", "conv1", 3, 32, 32),
    ("cifar", "conv2", 32, 15, 64),
    ("cifar", "conv3", 64, 6, 64),
]


def _time(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds per call of each function, interleaved, timed with CUDA events."""
    for fn in fns.values():  # warm-up: compilation, cuDNN's algorithm search, allocator
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(REPS):
                fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / 1e3 / REPS)
    return {k: statistics.median(v) for k, v in times.items()}


def _captured(step: Callable[[], object]) -> Callable[[], object]:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _case(batch: int, c: int, side: int, o: int, dtype: torch.dtype, backward: bool) -> dict[str, dict]:
    from bigmodel_native.ops import conv2d

    torch.manual_seed(0)
    x = torch.randn(batch, c, side, side, device=DEV, dtype=dtype, requires_grad=backward)
    w = (torch.randn(o, c, 3, 3, device=DEV) * 0.1).to(dtype).requires_grad_(backward)
    b = torch.randn(o, device=DEV, dtype=dtype, requires_grad=backward)
    gy = torch.randn(batch, o, side - 2, side - 2, device=DEV, dtype=dtype)

    def step(fn) -> Callable[[], object]:
        if not backward:
            return lambda: fn(x, w, b)
        return lambda: torch.autograd.grad(fn(x, w, b), (x, w, b), gy)

    eager = _time({"torch": step(F.conv2d), "ours": step(conv2d)})
    graph = _time({"torch": _captured(step(F.conv2d)), "ours": _captured(step(conv2d))})
    return {"eager": eager, "graph": graph}


@pytest.fixture(scope="module")
def conv_results(results_dir: Path) -> dict:
    import bigmodel_native  # noqa: F401  (registers the ops)
    from bigmodel_native import _cuda

    cases: dict[str, dict] = {}
    totals: dict[str, dict] = {}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for batch in (64, 512):
            for backward in (False, True):
                mode = "fwd+bwd" if backward else "fwd"
                for net, layer, c, side, o in LAYERS:
                    r = _case(batch, c, side, o, dtype, backward)
                    name = f"{net} {layer} ({batch}, {c}, {side}, {side})->{o} {label} {mode}"
                    cases[name] = {
                        "median_s": r,
                        "torch_over_ours_eager": r["eager"]["torch"] / r["eager"]["ours"],
                        "torch_over_ours_graph": r["graph"]["torch"] / r["graph"]["ours"],
                    }
                    key = f"{net} batch {batch} {label} {mode}"
                    t = totals.setdefault(key, {k: {"torch": 0.0, "ours": 0.0} for k in ("eager", "graph")})
                    for k in ("eager", "graph"):
                        for who in ("torch", "ours"):
                            t[k][who] += r[k][who]
                    print(f"{name}: eager {cases[name]['torch_over_ours_eager']:.2f}x, "
                          f"graph {cases[name]['torch_over_ours_graph']:.2f}x", flush=True)  # fmt: skip
    for t in totals.values():
        t["torch_over_ours_eager"] = t["eager"]["torch"] / t["eager"]["ours"]
        t["torch_over_ours_graph"] = t["graph"]["torch"] / t["graph"]["ours"]
    doc = {
        "suite": "gpu-conv2d",
        "machine": {
            "device": torch.cuda.get_device_name(),
            "capability": list(torch.cuda.get_device_capability()),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "nvrtc": list(_cuda.nvrtc_version()),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "method": (
            f"CUDA events, median of {ROUNDS} interleaved rounds of {REPS} calls; eager (host work "
            "included) and CUDA-graph replays (GPU work alone); ratio = torch time / our time"
        ),
        "target_torch_over_ours": TARGET,
        "totals": totals,
        "cases": cases,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "gpu-conv2d.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def test_conv2d_vs_torch(conv_results: dict) -> None:
    for name, t in conv_results["totals"].items():
        print(f"{name}: eager {t['torch_over_ours_eager']:.2f}x, graph {t['torch_over_ours_graph']:.2f}x")
    low = {k: t["torch_over_ours_graph"] for k, t in conv_results["totals"].items()}
    assert all(v >= TARGET for v in low.values()), low
