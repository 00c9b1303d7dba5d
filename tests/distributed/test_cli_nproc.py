"""``bigmodel-native train --nproc N`` and ``torchrun -m bigmodel_native.cli train``: DDP from the CLI,
rank-0 outputs and checkpoints, resume on a different process count, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from bigmodel_native.cli import main
from bigmodel_native.data.idx import write_idx
from bigmodel_native.training import launch as launch_mod


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("mnist")
    for split, n in (("train", 96), ("t10k", 32)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    return d


def _args(mnist_dir, out, epochs, *extra, threads=True):
    return [
        "train", "s3", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--batch-size", "32",
        "--epochs", str(epochs),
        "--out", str(out), "--quiet", *(["--threads", "1"] if threads else []), *extra,
    ]  # fmt: skip


def _records(out):
    return json.loads((out / "history.json").read_text())["records"]


def test_resume_on_2_processes_continues_the_1_process_run_exactly(tmp_path, mnist_dir, capfd):
    out = tmp_path / "run"
    assert main(_args(mnist_dir, out, 1)) == 0  # epoch 1 in one process
    capfd.readouterr()
    # Epochs 2-3 on two processes: rank 0 reads the checkpoint and broadcasts weights, Adam's state,
    # History and trainer state; the sampler splits the same global batches.
    assert main(_args(mnist_dir, out, 3, "--nproc", "2", "--resume")) == 0
    printed = capfd.readouterr().out
    assert printed.count("== s3 done") == 1  # rank 0 alone prints the summary
    assert (out / "checkpoint" / "LATEST").read_text().strip() == "epoch-0003"
    assert (out / "curves.png").exists()
    fresh = tmp_path / "single"
    assert main(_args(mnist_dir, fresh, 3)) == 0
    resumed, single = _records(out), _records(fresh)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert [r.get("processes", 1) for r in resumed] == [1, 2, 2]
    for mine, ref in zip(resumed, single, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    # The final test metrics: every rank evaluated its half, the sums were all-reduced.
    test_ddp, test_single = (
        json.loads((d / "history.json").read_text())["meta"]["test"] for d in (out, fresh)
    )
    assert test_ddp["confusion_matrix"] == test_single["confusion_matrix"]
    assert test_ddp["loss"] == pytest.approx(test_single["loss"], rel=1e-5)


def test_torchrun_starts_the_same_training(tmp_path, mnist_dir):
    out = tmp_path / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "bigmodel_native.cli", *_args(mnist_dir, out, 1)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("== s3 done") == 1
    fresh = tmp_path / "single"
    assert main(_args(mnist_dir, fresh, 1)) == 0
    assert _records(out)[0]["loss"] == pytest.approx(_records(fresh)[0]["loss"], rel=1e-5)


def test_batch_must_divide_among_processes(tmp_path, mnist_dir):
    with pytest.raises(SystemExit, match="--batch-size 33 does not divide among 2 processes"):
        main(_args(mnist_dir, tmp_path, 1, "--nproc", "2", "--batch-size", "33"))


def test_gan_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="s5 cannot train on several processes"):
        main(["train", "s5", "--nproc", "2", "--out", str(tmp_path), "--quiet"])


def test_failed_worker_message_names_the_checkpoint(tmp_path, mnist_dir, monkeypatch):
    out = tmp_path / "run"
    assert main(_args(mnist_dir, out, 1)) == 0  # a finished epoch to fall back on

    def dead(*args, **kwargs):
        raise launch_mod.WorkerFailed("2 worker processes: rank 1 (pid 1) was killed by SIGKILL")

    monkeypatch.setattr(launch_mod, "launch", dead)
    with pytest.raises(SystemExit) as e:
        main(_args(mnist_dir, out, 3, "--nproc", "2", "--resume"))
    text = str(e.value)
    assert "rank 1 (pid 1) was killed by SIGKILL" in text
    assert f"last complete checkpoint is {out / 'checkpoint' / 'epoch-0001'}; continue with --resume" in text


def test_threads_default_splits_the_cores(monkeypatch, tmp_path, mnist_dir):
    seen = {}

    def fake(fn, args, nproc):
        seen["threads"], seen["nproc"] = args[0].threads, nproc
        return {0: 0, 1: 0}

    monkeypatch.setattr(launch_mod, "launch", fake)
    assert main(_args(mnist_dir, tmp_path, 1, "--nproc", "2", threads=False)) == 0
    assert seen == {"threads": max(1, (os.cpu_count() or 1) // 2), "nproc": 2}
    assert torch.distributed.is_initialized() is False
