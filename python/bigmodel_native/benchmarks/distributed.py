"""S3 training throughput with 1 and 2 processes (DDP over gloo, one thread each), ours against plain torch.

Two worker processes are spawned once and joined into a gloo process group; the timed callables in
this process send each a command and wait until both have finished, so :func:`.harness.time_case`
interleaves the providers exactly as for the single-process suites (the queue round trip, well under
a millisecond, is part of each timed call of ``STEPS_PER_CALL`` training steps of ~20 ms).

Every process trains on its own pre-made batches of ``BATCH`` random 28x28 images (weak scaling: two
processes train on 2 x ``BATCH`` images per step, their gradients averaged by DDP):

- ``bigmodel_native``: :class:`~bigmodel_native.models.MnistCNN` (Conv2d from ``models._layers``),
  ``models._layers.cross_entropy`` and our Adam;
- ``torch``: the same stack from ``torch.nn``, ``F.cross_entropy`` and ``torch.optim.Adam``
  (foreach, its CPU default), from the same initial weights.

In the "1 process" case rank 0 trains alone, without DDP, while rank 1 waits for its next command;
in the "2 processes" case both ranks train the DistributedDataParallel model.
images/s = ``BATCH`` x processes x ``STEPS_PER_CALL`` / median call time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .harness import OURS, Case

SUITE = "ddp"
BATCH = 64
STEPS_PER_CALL = 10
TORCH = "torch"
PROCESSES = 2
ONE, TWO = "S3 train, 1 process x 1 thread", "S3 train, 2 processes x 1 thread (DDP)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, commands: Any, done: Any) -> None:
    """A benchmark process: builds the four training loops, then runs the ones it is told to."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .. import set_num_threads
    from ..models import MnistCNN, _layers
    from ..optim import Adam
    from .training import _batches, _loop, plain_torch_s3

    set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loops: dict[str, Callable[[], None]] = {}
        for procs in (1, world):
            torch.manual_seed(0)
            ours = MnistCNN()
            ref = plain_torch_s3()
            with torch.no_grad():
                for p_ref, p_ours in zip(ref.parameters(), ours.parameters(), strict=True):
                    p_ref.copy_(p_ours)
            batches = _batches(4, seed=100 + rank)
            ours_opt, ref_opt = Adam(ours.parameters(), lr=1e-3), torch.optim.Adam(ref.parameters(), lr=1e-3)
            if procs > 1:
                ours, ref = DDP(ours), DDP(ref)
            loops[f"{OURS} {procs}"] = _loop(ours, ours_opt, _layers.cross_entropy, batches, STEPS_PER_CALL)
            loops[f"{TORCH} {procs}"] = _loop(ref, ref_opt, F.cross_entropy, batches, STEPS_PER_CALL)
        done.put(("ready", rank))
        while True:
            cmd = commands.get()
            if cmd is None:
                break
            loops[cmd]()
            done.put(("done", rank))
    except BaseException as e:  # report, so that the parent fails instead of waiting forever
        done.put(("error", f"rank {rank}: {type(e).__name__}: {e}"))
        raise
    finally:
        dist.destroy_process_group()


class WorkerPool:
    """``PROCESSES`` spawned benchmark workers in one gloo group, driven from this process."""

    def __init__(self, world: int = PROCESSES, timeout_s: float = 120.0) -> None:
        ctx = mp.get_context("spawn")
        self.timeout_s = timeout_s
        self.done = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(world)]
        port = _free_port()
        self.procs = [
            ctx.Process(target=_worker, args=(r, world, port, self.commands[r], self.done), daemon=True)
            for r in range(world)
        ]
        for p in self.procs:
            p.start()
        self._finalizer = weakref.finalize(self, WorkerPool._shutdown, self.commands, self.procs)
        self._wait(world, "ready")

    def _wait(self, n: int, what: str) -> None:
        for _ in range(n):
            try:
                kind, info = self.done.get(timeout=self.timeout_s)
            except queue.Empty:
                self.close()
                dead = [
                    f"rank {r}: exit code {p.exitcode}" for r, p in enumerate(self.procs) if not p.is_alive()
                ]
                raise RuntimeError(
                    f"benchmark workers gave no '{what}' within {self.timeout_s:.0f}s"
                    + (f" ({', '.join(dead)})" if dead else "")
                ) from None
            if kind == "error":
                self.close()
                raise RuntimeError(f"benchmark worker failed: {info}")
            assert kind == what, (kind, what)

    def run(self, loop: str, ranks: int) -> None:
        """Runs ``loop`` on ranks ``0 .. ranks-1`` and waits for all of them."""
        for r in range(ranks):
            self.commands[r].put(loop)
        self._wait(ranks, "done")

    def provider(self, loop: str, ranks: int) -> Callable[[], None]:
        return lambda: self.run(loop, ranks)

    @staticmethod
    def _shutdown(commands: list, procs: list) -> None:
        for q in commands:
            q.put(None)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()

    def close(self) -> None:
        self._finalizer()


def cases(quick: bool = False, pool: WorkerPool | None = None) -> list[Case]:
    """The 1-process and 2-process cases; their callables drive ``pool`` (spawned when None)."""
    pool = pool or WorkerPool()
    rounds, warmup = (4, 1) if quick else (8, 2)
    return [
        Case(
            SUITE,
            f"{ONE}, batch {BATCH} x {STEPS_PER_CALL}",
            {OURS: pool.provider(f"{OURS} 1", 1), TORCH: pool.provider(f"{TORCH} 1", 1)},
            rounds=rounds,
            warmup=warmup,
        ),
        Case(
            SUITE,
            f"{TWO}, batch {PROCESSES}x{BATCH} x {STEPS_PER_CALL}",
            {
                OURS: pool.provider(f"{OURS} {PROCESSES}", PROCESSES),
                TORCH: pool.provider(f"{TORCH} {PROCESSES}", PROCESSES),
            },
            rounds=rounds,
            warmup=warmup,
        ),
    ]


def images_per_call(processes: int) -> int:
    return BATCH * processes * STEPS_PER_CALL


def implementations() -> dict[str, str]:
    from ..models import _layers

    return dict(_layers.IMPLEMENTATIONS)
