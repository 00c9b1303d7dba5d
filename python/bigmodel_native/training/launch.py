"""Several training processes on one machine: ``bigmodel-native train --nproc N`` and ``torchrun``.

``--nproc N`` starts N workers with torch's elastic launcher (the machinery behind ``torchrun
--standalone``: a c10d rendezvous on a free local port, ``spawn``ed processes, no restarts). Each
worker joins the process group from the env:// variables the launcher set (gloo on CPU, NCCL with
one GPU per process), takes ``--threads`` threads (default: the machine's cores divided among the
workers) and runs the ordinary ``train`` command, whose ``fit`` is then data-parallel
(:mod:`.distributed`). Rank 0 prints and writes the output folder; the other ranks write their
plots into a scratch folder that is removed afterwards.

Started by ``torchrun --nproc-per-node N -m bigmodel_native.cli train ...`` instead, each process
finds those variables already set and does the same.

If a worker dies or raises, the launcher stops the others and :func:`launch` raises
:class:`WorkerFailed` naming the rank and the cause; the checkpoints of epochs completed before are
whole (see :mod:`.checkpoint`) and ``--resume`` continues from the latest, on any process count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest_checkpoint
from .distributed import init_from_env, is_distributed, launched_by_torchrun, rank_and_world

#: Systems trained by ``fit`` (and so by DDP). S5's GAN loop trains two models in one process.
DATA_PARALLEL = ("s1", "s2", "s3", "s4", "s6", "s6-lm", "s7")


class WorkerFailed(RuntimeError):
    """A worker process died or raised; the message names the rank(s) and the cause."""


def _failure_text(f: Any) -> str:
    if f.exitcode is not None and f.exitcode < 0:
        how = f"was killed by {f.signal_name()}"
    else:
        how = f"exited with code {f.exitcode}"
    msg = f.message
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    msg = "" if msg in (None, "", "<NONE>") or str(msg).startswith("Signal ") else f": {msg}"
    return f"rank {f.local_rank} (pid {f.pid}) {how}{msg}"


def launch(
    fn: Callable[..., Any], args: tuple = (), nproc: int = 2, *, monitor_interval: float = 0.1
) -> dict[int, Any]:
    """Runs ``fn(*args)`` in ``nproc`` new processes on this machine; returns ``{rank: result}``.

    ``fn`` must be importable by name (the workers are spawned, not forked: a forked child of a
    process that already ran torch's thread pool can hang). Each worker finds RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment. Raises :class:`WorkerFailed` when
    a worker fails; the launcher has then already stopped the others.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"bigmodel-native-{uuid.uuid4()}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port, as torchrun --standalone
        rdzv_configs={"timeout": 120},
        max_restarts=0,
        monitor_interval=monitor_interval,
        start_method="spawn",
        shutdown_timeout=10,
    )
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as e:
        root_rank, root = e.get_first_failure()
        others = [f for r, f in sorted(e.failures.items()) if r != root_rank]
        text = f"{nproc} worker processes: {_failure_text(root)}"
        if others:
            text += "; then " + "; ".join(_failure_text(f) for f in others)
        raise WorkerFailed(text) from None


def _check(args: argparse.Namespace, world: int) -> None:
    if args.system not in DATA_PARALLEL:
        raise SystemExit(
            f"error: {args.system} cannot train on several processes (its GAN loop is single-process); "
            f"--nproc and torchrun work for {', '.join(DATA_PARALLEL)}"
        )
    from .systems import DEFAULTS

    batch = DEFAULTS[args.system].batch_size if args.batch_size is None else args.batch_size
    if batch % world:
        raise SystemExit(
            f"error: --batch-size {batch} does not divide among {world} processes: each takes an equal "
            "share of the global batch"
        )
    if args.device == "cuda":
        n = torch.cuda.device_count()
        if world > n:
            raise SystemExit(f"error: {world} processes on CUDA need {world} GPUs; this machine has {n}")


def worker(args: argparse.Namespace) -> int:
    """One training process: join the group, run ``train`` as rank r, leave the group."""
    from .cli import run_train

    init_from_env(args.device)
    rank, world = rank_and_world()
    _check(args, world)
    args.nproc = None
    scratch = None
    if rank != 0:  # rank 0 prints and owns the output folder (and the checkpoints)
        args.quiet = True
        scratch = tempfile.mkdtemp(prefix=f"bigmodel-native-rank{rank}-")
        args.out = scratch
    try:
        return run_train(args)
    finally:
        torch.distributed.destroy_process_group()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def maybe_distribute(args: argparse.Namespace) -> int | None:
    """What ``train`` does about processes: an exit code when it ran workers, None to train here."""
    nproc = getattr(args, "nproc", None)
    if is_distributed():
        return None  # this is a worker: train
    if launched_by_torchrun():
        if nproc is not None:
            raise SystemExit(
                "error: --nproc is for a plain start; under torchrun, torchrun starts the processes"
            )
        return worker(args)
    if nproc is None or nproc == 1:
        return None
    if nproc < 1:
        raise SystemExit(f"error: --nproc must be >= 1, got {nproc}")
    _check(args, nproc)
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // nproc)
    out = Path(args.out or Path("runs") / args.system)
    args.out = str(out)
    try:
        results = launch(worker, (args,), nproc)
    except WorkerFailed as e:
        ckpt = latest_checkpoint(out / "checkpoint")
        where = (
            f"the last complete checkpoint is {ckpt}; continue with --resume (any --nproc)"
            if ckpt is not None
            else "no checkpoint was completed"
        )
        raise SystemExit(f"error: training failed on {e}\n{where}") from None
    return max(int(r or 0) for r in results.values())
