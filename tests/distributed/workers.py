"""Functions the distributed tests run in spawned worker processes (importable by name, as spawn needs).

Each runs on every rank of a gloo process group it joins from the launcher's env:// variables, with
one thread, and returns plain data (tensors on CPU) to the test in the parent process.
"""

from __future__ import annotations

import copy
import os
import signal
from typing import Any

import torch
import torch.distributed as dist
from bigmodel_native.models import MnistCNN
from bigmodel_native.optim import Adam, AdamW
from bigmodel_native.training import Callback, fit
from torch import nn

S3_SAMPLES, S3_BATCH, S3_EPOCHS, S3_SEED = 96, 32, 2, 3


def _join() -> tuple[int, int]:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def s3_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.rand(S3_SAMPLES, 1, 28, 28, generator=g), torch.randint(0, 10, (S3_SAMPLES,), generator=g)


def s3_fit(
    checkpoint_dir: str | None = None, optimizer: str = "adam", epochs: int = S3_EPOCHS, resume: bool = False
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """S3 trained with ``fit`` (data-parallel when a process group exists): (weights, History records).

    ``optimizer``: our ``"adam"``, our ``"adamw"``, or ``"zero-adamw"`` (our AdamW inside a
    ZeroRedundancyOptimizer: each rank steps its share of the parameters, then broadcasts them).
    """
    torch.manual_seed(0)
    model = MnistCNN()
    if optimizer == "zero-adamw":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=AdamW, lr=1e-3)
    else:
        opt = {"adam": Adam, "adamw": AdamW}[optimizer](model.parameters(), lr=1e-3)
    x, y = s3_data()
    hist = fit(
        model,
        (x[:80], y[:80]),
        validation_data=(x[80:], y[80:]),
        epochs=epochs,
        batch_size=S3_BATCH,
        optimizer=opt,
        seed=S3_SEED,
        verbose=0,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, hist.records


def s3_evaluate(weights: dict[str, torch.Tensor]) -> dict:
    """``evaluate`` of S3 with ``weights`` on 81 samples (41 + 40 per rank under 2 processes)."""
    from bigmodel_native.training import evaluate

    model = MnistCNN()
    model.load_state_dict(weights)
    x, y = s3_data()
    return evaluate(model, (x[:81], y[:81]), batch_size=16)


def _replicas_agree(weights: dict[str, torch.Tensor]) -> bool:
    same = True
    for t in weights.values():
        ref = t.clone()
        dist.broadcast(ref, src=0)
        same &= bool(torch.equal(ref, t))
    return same


def ddp_s3(checkpoint_dir: str) -> dict[str, Any]:
    """S3 under DDP with our Adam, then with our AdamW inside ZeRO: (weights, records, replicas agree)."""
    _join()
    try:
        out = {}
        for opt in ("adam", "zero-adamw"):
            weights, records = s3_fit(f"{checkpoint_dir}/{opt}", opt)
            out[opt] = (weights, records, _replicas_agree(weights))
        # One more epoch from ZeRO's checkpoint: each rank takes its shard of the consolidated state.
        weights, records = s3_fit(f"{checkpoint_dir}/zero-adamw", "zero-adamw", S3_EPOCHS + 1, resume=True)
        out["zero-adamw resumed"] = (weights, records, _replicas_agree(weights))
        out["evaluate"] = s3_evaluate(out["adam"][0])
        return out
    finally:
        dist.destroy_process_group()


class _DieAtEpoch(Callback):
    """Kills ``rank`` (SIGKILL: no cleanup, as an OOM kill would) when ``epoch`` begins.

    All ranks meet at a barrier first: rank 0 reaches it only after writing the previous epoch's
    checkpoint, so which checkpoint is the last complete one does not depend on timing.
    """

    def __init__(self, rank: int, epoch: int) -> None:
        self.rank, self.epoch = rank, epoch

    def on_epoch_begin(self, epoch: int) -> None:
        if epoch == self.epoch:
            dist.barrier()
            if dist.get_rank() == self.rank:
                os.kill(os.getpid(), signal.SIGKILL)


def ddp_dies(checkpoint_dir: str) -> None:
    _join()
    torch.manual_seed(0)
    model = MnistCNN()
    x, y = s3_data()
    fit(
        model,
        (x, y),
        epochs=5,
        batch_size=S3_BATCH,
        optimizer=Adam(model.parameters(), lr=1e-3),
        seed=S3_SEED,
        verbose=0,
        checkpoint_dir=checkpoint_dir,
        callbacks=[_DieAtEpoch(rank=1, epoch=2)],
    )


def _model() -> nn.Module:
    # Uneven shapes on purpose: Linear(5, 7) shards 4 + 3 rows, the bias of Linear(3, 1) 1 + 0.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 1))


def _train(model: nn.Module, opt: torch.optim.Optimizer, rank: int, steps: int = 6) -> None:
    g = torch.Generator().manual_seed(100 + rank)  # every rank its own data
    for _ in range(steps):
        x = torch.randn(8, 5, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p - q).abs().max()) if p.numel() else 0.0 for p, q in zip(a, b, strict=True))


def _state_layout(sd: dict) -> list[tuple]:
    """(param id, key, type, placements, local shape) of every optimizer state entry."""
    out = []
    for pid, st in sorted(sd["state"].items()):
        for key, v in sorted(st.items()):
            placements = tuple(str(p) for p in getattr(v, "placements", ()))
            local = v.to_local() if hasattr(v, "to_local") else v
            out.append((pid, key, type(v).__name__, placements, tuple(local.shape)))
    return out


OPTIMIZERS = {
    "AdamW": (AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    "Adam-amsgrad": (Adam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=0.01)),
}


def fsdp_and_zero() -> dict[str, object]:
    """FSDP2 and ZeRO, each with our optimizer and torch's, from the same weights on the same data."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    rank, world = _join()
    out: dict[str, object] = {}
    try:
        mesh = init_device_mesh("cpu", (world,))
        base = _model()
        for name, (ours_cls, torch_cls, kw) in OPTIMIZERS.items():
            full, layout, local_shapes = {}, {}, {}
            for who, cls in (("ours", ours_cls), ("torch", torch_cls)):
                m = copy.deepcopy(base)
                for layer in (m[0], m[2], m[4]):
                    fully_shard(layer, mesh=mesh)
                fully_shard(m, mesh=mesh)
                opt = cls(m.parameters(), **kw)
                _train(m, opt, rank)
                full[who] = [p.full_tensor() for p in m.parameters()]
                layout[who] = _state_layout(opt.state_dict())
                local_shapes[who] = [tuple(p.to_local().shape) for p in m.parameters()]
            out[f"fsdp {name} max diff"] = _max_diff(full["ours"], full["torch"])
            out[f"fsdp {name} layout"] = (layout["ours"], layout["torch"])
            out[f"fsdp {name} local shapes"] = local_shapes["ours"]
            zero = {}
            for who, cls in (("ours", ours_cls), ("torch", torch_cls)):
                m = copy.deepcopy(base)
                ddp = DistributedDataParallel(m)
                opt = ZeroRedundancyOptimizer(m.parameters(), optimizer_class=cls, **kw)
                _train(ddp, opt, rank)
                zero[who] = [p.detach().clone() for p in m.parameters()]
                out[f"zero {name} {who} local optimizer"] = type(opt.optim).__module__
                opt.consolidate_state_dict(to=0)
                if rank == 0:
                    layout[who] = _state_layout(opt.state_dict())
            out[f"zero {name} max diff"] = _max_diff(zero["ours"], zero["torch"])
            if rank == 0:
                out[f"zero {name} layout"] = (layout["ours"], layout["torch"])
        out["mixed error"] = _mixed_error(mesh)
        out["redistributed grads max diff"] = _redistributed_grads(mesh)
        out["fsdp s3"] = fsdp_s3(mesh, rank, world)
        out["fsdp fit"] = fsdp_fit(mesh)
        return out
    finally:
        dist.destroy_process_group()


def _redistributed_grads(mesh) -> float:
    """Gradients placed unlike their parameters (sharded on another dim, replicated, sharded vs
    replicated params): ours redistributes them and must land where torch's AdamW does."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 4, generator=g)
    grads = [torch.randn(6, 4, generator=g) for _ in range(3)]
    worst = 0.0
    for p_place, g_place in (
        ([Shard(0)], [Shard(1)]),
        ([Replicate()], [Shard(0)]),
        ([Shard(0)], [Replicate()]),
    ):
        final = []
        for cls in (AdamW, torch.optim.AdamW):
            p = nn.Parameter(distribute_tensor(w.clone(), mesh, p_place))
            opt = cls([p], lr=0.1)
            for grad in grads:
                p.grad = distribute_tensor(grad, mesh, g_place)
                opt.step()
            assert opt.state[p]["exp_avg"].placements == p.placements
            final.append(p.full_tensor().detach())
        worst = max(worst, float((final[0] - final[1]).abs().max()))
    return worst


def _mixed_error(mesh) -> str:
    """Our optimizer on a DTensor parameter whose state was replaced by a plain tensor."""
    from torch.distributed.tensor import Shard, distribute_tensor

    p = nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
    opt = AdamW([p])
    p.grad = distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)])
    opt.step()
    opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].to_local().clone()
    try:
        opt.step()
    except RuntimeError as e:
        return str(e)
    return "no error"


FSDP_S3_STEPS, FSDP_S3_BATCH = 3, 16


def fsdp_s3_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    return [
        (
            torch.rand(FSDP_S3_BATCH, 1, 28, 28, generator=g),
            torch.randint(0, 10, (FSDP_S3_BATCH,), generator=g),
        )
        for _ in range(FSDP_S3_STEPS)
    ]


def s3_adamw(batches, shard=None) -> dict[str, torch.Tensor]:
    """S3 (its layers from models._layers: our ops where they exist) trained with AdamW on ``batches``.

    ``shard=(mesh, rank, world)``: FSDP2 (each top-level block and the root sharded), our AdamW, each
    rank taking its slice of every global batch. Otherwise one process with torch's AdamW.
    """
    from bigmodel_native.models import _layers

    torch.manual_seed(0)
    model = MnistCNN()
    if shard is not None:
        from torch.distributed.fsdp import fully_shard

        mesh, rank, world = shard
        fully_shard(model.features, mesh=mesh)
        fully_shard(model.classifier, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = AdamW(model.parameters(), lr=1e-3)
    else:
        rank, world = 0, 1
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    for x, y in batches:
        n = len(x) // world
        opt.zero_grad()
        _layers.cross_entropy(model(x[rank * n : (rank + 1) * n]), y[rank * n : (rank + 1) * n]).backward()
        opt.step()
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def fsdp_s3(mesh, rank: int, world: int) -> dict[str, torch.Tensor]:
    return s3_adamw(fsdp_s3_batches(), (mesh, rank, world))


def fsdp_fit(mesh) -> tuple[dict[str, torch.Tensor], list[dict], dict, str]:
    """``fit`` and ``evaluate`` of an FSDP2-sharded S3, our Adam: (full weights, records, test metrics)."""
    from bigmodel_native.training import evaluate
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = MnistCNN()
    fully_shard(model.features, mesh=mesh)
    fully_shard(model.classifier, mesh=mesh)
    fully_shard(model, mesh=mesh)
    x, y = s3_data()
    hist = fit(
        model,
        (x[:80], y[:80]),
        validation_data=(x[80:], y[80:]),
        epochs=S3_EPOCHS,
        batch_size=S3_BATCH,
        optimizer=Adam(model.parameters(), lr=1e-3),
        seed=S3_SEED,
        verbose=0,
    )
    test = evaluate(model, (x[:81], y[:81]), batch_size=16)
    weights = {k: v.full_tensor().detach().clone() for k, v in model.state_dict().items()}
    try:
        fit(model, (x, y), epochs=1, checkpoint_dir="unused", verbose=0)
        refusal = "none"
    except NotImplementedError as e:
        refusal = str(e)
    return weights, hist.records, test, refusal
