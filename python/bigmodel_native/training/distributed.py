"""Data-parallel ``fit`` on torch.distributed: DistributedDataParallel, a DistributedSampler, metrics
reduced across ranks, checkpoints written and read by rank 0 only.

:func:`.loop.fit` hands over to :func:`fit_distributed` whenever a process group is initialised
(``bigmodel-native train --nproc N``, ``torchrun ... -m bigmodel_native.cli train``, or a user's own
``init_process_group``). Every rank runs the same call on the same data:

- The data is split by :class:`EpochSampler`, torch's ``DistributedSampler`` drawing each epoch's
  permutation exactly as the single-process ``fit`` does. Each rank takes ``batch_size / world_size``
  samples per step; step ``b`` of all ranks together covers positions ``[b*B, (b+1)*B)`` of that
  permutation, i.e. the same global batch as ``fit`` with ``batch_size=B`` in one process. As DDP
  averages the ranks' gradients of equally sized local batches, the update is the single-process one
  up to floating-point summation order. (When the sample count does not divide by the world size the
  sampler pads by repeating the first samples, as torch's does. Dropout masks are drawn per rank,
  so a model with dropout matches the single-process run in distribution, not bit for bit.)
- Losses, accuracy and sample counts of training and validation (each rank validates its own slice)
  are summed over ranks with ``all_reduce``, so History, callbacks and early stopping see the same
  global numbers on every rank. :func:`.loop.evaluate` likewise hands over to
  :func:`evaluate_distributed` (slices, summed loss and confusion matrices).
- Rank 0 writes the checkpoints (the usual atomic layout of :mod:`.checkpoint`) and, on resume, reads
  the latest one and broadcasts weights, optimizer state, History and trainer state to the others. DDP
  keeps replicas identical, so a checkpoint is the single-process one and a run may resume on any
  number of processes. A :class:`~torch.distributed.optim.ZeroRedundancyOptimizer` is consolidated
  onto rank 0 before saving.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .callbacks import Callback
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .history import History
from .loop import (
    PROGRESS_MIN_BATCHES,
    Data,
    LossFn,
    _as_tensors,
    _device_of,
    _epoch_seed,
    _is_classification,
    _run_eval,
    format_epoch,
    resolve_loss,
    resolve_optimizer,
)
from .metrics import classification_report, confusion_matrix


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_rank_zero() -> bool:
    return rank_and_world()[0] == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set the env:// variables for this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(device: str = "cpu") -> torch.device:
    """Joins the process group described by the env:// variables: gloo on CPU, NCCL on CUDA.

    Returns the device this rank trains on (``cuda:LOCAL_RANK`` for CUDA).
    """
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                "start at most one process per GPU"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        if not is_distributed():
            dist.init_process_group("nccl", device_id=dev)
        return dev
    if not is_distributed():
        dist.init_process_group("gloo")
    return torch.device("cpu")


class EpochSampler(DistributedSampler):
    """torch's ``DistributedSampler`` with :func:`.loop.fit`'s per-epoch permutation.

    Rank ``r`` of ``W`` gets positions ``r, r+W, r+2W, ...`` of the (padded) permutation, as in
    torch; only the permutation's seed differs (``fit``'s ``(seed, epoch)`` mix instead of
    ``seed + epoch``), so that one process reproduces ``fit`` exactly.
    """

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last:
            pad = self.total_size - len(indices)
            if pad <= len(indices):
                indices += indices[:pad]
            else:
                indices += (indices * math.ceil(pad / len(indices)))[:pad]
        else:
            indices = indices[: self.total_size]
        assert len(indices) == self.total_size
        mine = indices[self.rank : self.total_size : self.num_replicas]
        assert len(mine) == self.num_samples
        return iter(mine)


def _all_reduce(t: Tensor, op: Any = dist.ReduceOp.SUM) -> Tensor:
    dist.all_reduce(t, op=op)
    return t


def _reduce_device(dev: torch.device) -> torch.device:
    """Where reduction buffers live: NCCL needs CUDA tensors, gloo takes CPU ones."""
    return dev if dist.get_backend() == "nccl" else torch.device("cpu")


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _is_zero(opt: torch.optim.Optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(opt, ZeroRedundancyOptimizer)


def _broadcast_checkpoint(
    checkpoint_dir: Any, module: torch.nn.Module, opt: torch.optim.Optimizer
) -> tuple[History, dict[str, Any]] | None:
    """Rank 0 reads the latest checkpoint; every rank loads what it broadcasts."""
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        path = latest_checkpoint(checkpoint_dir)
        if path is not None:
            loaded = load_checkpoint(checkpoint_dir, module, None)
            assert loaded is not None
            opt_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
            payload = [(_to_cpu(module.state_dict()), opt_state, loaded[0], loaded[1])]
    dist.broadcast_object_list(payload, src=0)
    if payload[0] is None:
        return None
    weights, opt_state, hist, trainer_state = payload[0]
    if dist.get_rank() != 0:
        module.load_state_dict(weights)
    opt.load_state_dict(opt_state)
    return hist, trainer_state


def _has_dtensor_params(module: torch.nn.Module) -> bool:
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return dtensor is not None and any(isinstance(p, dtensor) for p in module.parameters())


def _shared_seed(seed: int | None) -> int:
    """``seed``, or one drawn on rank 0 and shared, so every rank permutes alike."""
    box = [seed if seed is not None else int(torch.randint(0, 2**62, ()).item())]
    if seed is None:
        dist.broadcast_object_list(box, src=0)
    return int(box[0])


def _validate(
    module: torch.nn.Module, val: tuple[Tensor, Tensor], loss_fn: LossFn, batch_size: int, want_acc: bool
) -> tuple[float, float | None]:
    """Validation loss (and accuracy) over all ranks, each evaluating its own contiguous slice.

    A sharded (FSDP2) model gathers its parameters in every forward, a collective that all ranks must
    join equally often: there every rank evaluates all of ``val`` instead.
    """
    if _has_dtensor_params(module):
        vl, va, _ = _run_eval(module, val[0], val[1], loss_fn, batch_size, want_acc)
        return vl, va
    rank, world = rank_and_world()
    lo, hi = len(val[0]) * rank // world, len(val[0]) * (rank + 1) // world
    xv, yv = val[0][lo:hi], val[1][lo:hi]
    sums = torch.zeros(4, dtype=torch.float64)
    if len(xv):
        vl, va, _ = _run_eval(module, xv, yv, loss_fn, batch_size, want_acc)
        sums[0], sums[1] = vl * len(xv), len(xv)
        if va is not None:
            sums[2], sums[3] = round(va * yv.numel()), yv.numel()
    sums = _all_reduce(sums.to(_reduce_device(_device_of(module)))).cpu()
    loss = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
    acc = float(sums[2] / sums[3]) if want_acc and sums[3] > 0 else (float("nan") if want_acc else None)
    return loss, acc


def fit_distributed(
    model: torch.nn.Module,
    data: Data,
    *,
    epochs: int,
    batch_size: int = 32,
    optimizer: str | torch.optim.Optimizer = "adam",
    loss: str | LossFn = "cross_entropy",
    validation_split: float | None = None,
    validation_data: Data | None = None,
    metrics: Sequence[str] | str = "auto",
    callbacks: Sequence[Callback] = (),
    seed: int | None = None,
    shuffle: bool = True,
    verbose: int = 1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    checkpoint_every: int = 1,
    history: History | None = None,
) -> History:
    """:func:`.loop.fit` on every rank of the current process group; ``batch_size`` is the global batch.

    ``model`` may be a plain module (wrapped in DistributedDataParallel here), already a DDP
    module, or a module sharded with FSDP2's ``fully_shard`` (trained as it is, without
    checkpoints). Only rank 0 prints, writes and reads checkpoints (``checkpoint_dir`` matters on
    rank 0).
    """
    if not is_distributed():
        raise RuntimeError("fit_distributed needs an initialised torch.distributed process group")
    rank, world = rank_and_world()
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size % world:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the world size {world}: each process takes an "
            "equal share of the global batch"
        )
    if validation_split is not None and validation_data is not None:
        raise ValueError("give validation_split or validation_data, not both")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    x, y = _as_tensors(data, "data")
    if validation_split is not None:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
        cut = len(x) - int(len(x) * validation_split)
        x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
    val = _as_tensors(validation_data, "validation_data") if validation_data is not None else None
    if len(x) == 0:
        raise ValueError("no training samples")
    ddp = model if isinstance(model, DistributedDataParallel) else None
    module = ddp.module if ddp is not None else model
    sharded = _has_dtensor_params(module)
    if sharded and checkpoint_dir is not None:
        raise NotImplementedError(
            "fit's checkpoints hold whole tensors; this model's parameters are DTensors (FSDP2's "
            "fully_shard): train it without checkpoint_dir, or save with torch.distributed.checkpoint"
        )
    dev = _device_of(module)
    x, y = x.to(dev), y.to(dev)
    if val is not None:
        val = (val[0].to(dev), val[1].to(dev))
    opt = resolve_optimizer(optimizer, module)
    loss_fn = resolve_loss(loss)
    if metrics == "auto":
        metrics = ["accuracy"] if _is_classification(y) else []
    elif isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m != "accuracy"]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; supported: ['accuracy']")
    want_acc = "accuracy" in metrics
    verbose = verbose if rank == 0 else 0

    hist = history if history is not None else History()
    start = 0
    if resume:
        loaded = _broadcast_checkpoint(checkpoint_dir, module, opt)
        if loaded is not None:
            hist_loaded, trainer_state = loaded
            hist.records = hist_loaded.records
            hist.meta.update(hist_loaded.meta)
            for i, cb in enumerate(callbacks):
                st = trainer_state.get("callbacks", {}).get(i)
                if st is not None and hasattr(cb, "load_state_dict"):
                    cb.load_state_dict(st)
            if "rng" in trainer_state:
                torch.set_rng_state(trainer_state["rng"])
            start = hist.epochs_done
            if verbose:
                print(
                    f"resumed from {checkpoint_dir} after epoch {start} on {world} processes", file=sys.stderr
                )
    if sharded:
        net = module  # FSDP2 gathers the parameters and reduce-scatters the gradients itself
    elif ddp is None:
        # DDP's constructor broadcasts rank 0's parameters and buffers: all replicas start alike.
        net = DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)
    else:
        net = ddp
    seed = _shared_seed(seed)
    sampler = EpochSampler(range(len(x)), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
    local_batch = batch_size // world
    n_batches = math.ceil(sampler.num_samples / local_batch)
    red_dev = _reduce_device(dev)

    for cb in callbacks:
        cb.stop_training = False
        cb.on_train_begin({"epochs": epochs, "start_epoch": start})
    net.train()
    for epoch in range(start, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        torch.manual_seed(_epoch_seed(seed, epoch) + rank)  # dropout / noise: independent per rank
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64, device=dev)
        lr = float(opt.param_groups[0]["lr"])
        total_loss = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        count = samples = 0
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="batch",
            leave=False,
            disable=verbose != 1 or n_batches < PROGRESS_MIN_BATCHES,
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        for b in range(n_batches):
            idx = order[b * local_batch : (b + 1) * local_batch]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            out = net(xb)
            batch_loss = loss_fn(out, yb)
            batch_loss.backward()  # DDP (or FSDP2) averages the gradients over ranks here
            opt.step()
            with torch.no_grad():
                total_loss += batch_loss.detach().double() * len(xb)
                if want_acc:
                    correct += (out.argmax(-1) == yb).sum()
            count += yb.numel() if want_acc else len(xb)
            samples += len(xb)
            if not bar.disable:
                bar.update(1)
        bar.close()
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=red_dev)
        sums = torch.tensor(
            [float(total_loss), float(correct), count, samples], dtype=torch.float64, device=red_dev
        )
        sums = _all_reduce(sums).cpu()
        seconds = float(_all_reduce(elapsed, dist.ReduceOp.MAX).cpu())
        n_seen = float(sums[3])
        logs: dict[str, float] = {"epoch": epoch + 1, "loss": float(sums[0]) / n_seen}
        if want_acc:
            logs["accuracy"] = float(sums[1]) / max(float(sums[2]), 1.0)
        if val is not None:
            vl, va = _validate(module, val, loss_fn, max(batch_size, 256), want_acc)
            logs["val_loss"] = vl
            if va is not None:
                logs["val_accuracy"] = va
        logs["lr"] = lr
        logs["time_s"] = seconds
        logs["samples_per_s"] = n_seen / seconds if seconds > 0 else float("inf")
        logs["processes"] = world  # absent from single-process epochs
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        hist.append(logs)
        if verbose:
            print(f"{format_epoch(logs, epochs)}  ({world} processes)", flush=True)
        last = epoch + 1 == epochs or any(cb.stop_training for cb in callbacks)
        if checkpoint_dir is not None and (last or (epoch + 1) % max(1, checkpoint_every) == 0):
            if _is_zero(opt):
                opt.consolidate_state_dict(to=0)  # a collective: every rank takes part
            if rank == 0:
                state: dict[str, Any] = {
                    "callbacks": {
                        i: cb.state_dict() for i, cb in enumerate(callbacks) if hasattr(cb, "state_dict")
                    },
                    "rng": torch.get_rng_state(),
                }
                save_checkpoint(checkpoint_dir, module, opt, hist, state)
        if any(cb.stop_training for cb in callbacks):
            break
    for cb in callbacks:
        cb.on_train_end({"history": hist})
    return hist


def evaluate_distributed(
    model: torch.nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    loss: str | LossFn = "cross_entropy",
    num_classes: int | None = None,
) -> dict[str, Any]:
    """:func:`.loop.evaluate` with each rank evaluating a contiguous slice of ``data``.

    The loss sums, sample counts and confusion matrices are summed over ranks, so every rank returns
    the metrics of the whole data set (the same as one process, up to summation order). A sharded
    (FSDP2) model, whose forwards are collectives, evaluates all of ``data`` on every rank instead.
    """
    module = model.module if isinstance(model, DistributedDataParallel) else model
    x, y = _as_tensors(data, "data")
    loss_fn = resolve_loss(loss)
    classify = _is_classification(y)
    split = not _has_dtensor_params(module)
    rank, world = rank_and_world() if split else (0, 1)
    dev = _device_of(module)
    red_dev = _reduce_device(dev)
    lo, hi = len(x) * rank // world, len(x) * (rank + 1) // world
    xs, ys = x[lo:hi], y[lo:hi]
    if classify and num_classes is None:
        with torch.no_grad():
            was_training = module.training
            module.eval()
            num_classes = int(module(x[:1].to(dev)).shape[-1]) if len(x) else 0
            module.train(was_training)
    sums = torch.zeros(2, dtype=torch.float64)
    cm = torch.zeros(num_classes or 0, num_classes or 0, dtype=torch.int64)
    if len(xs):
        vl, _, pred = _run_eval(module, xs, ys, loss_fn, batch_size, classify)
        sums[0], sums[1] = vl * len(xs), len(xs)
        if classify:
            assert pred is not None and num_classes is not None
            cm = confusion_matrix(pred, ys, num_classes)
    if split:
        sums = _all_reduce(sums.to(red_dev)).cpu()
    out: dict[str, Any] = {"loss": float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")}
    if not classify:
        return out
    if split:
        cm = _all_reduce(cm.to(red_dev)).cpu()
    out.update(classification_report(cm))
    out["confusion_matrix"] = cm.tolist()
    return out
