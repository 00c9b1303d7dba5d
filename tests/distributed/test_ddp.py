"""Data-parallel training (DDP, gloo, 2 CPU processes) against single-process training.

``fit`` inside a process group splits each global batch over the ranks and averages gradients
through DDP, so 2 processes must give the weights and History of 1 process on the same global
batches, up to floating-point summation order.
"""

from __future__ import annotations

import pytest
import torch
from bigmodel_native.models import MnistCNN
from bigmodel_native.optim import Adam, AdamW
from bigmodel_native.training import load_checkpoint
from bigmodel_native.training.launch import WorkerFailed, launch

from . import workers


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt")
    return ckpt, launch(workers.ddp_s3, (str(ckpt),), nproc=2)


@pytest.mark.parametrize("optimizer", ["adam", "zero-adamw"])
def test_ddp_s3_matches_single_process(ddp_runs, optimizer):
    ckpt, results = ddp_runs
    single_w, single_records = workers.s3_fit(optimizer=optimizer.removeprefix("zero-"))
    for rank in (0, 1):
        weights, records, replicas_agree = results[rank][optimizer]
        assert replicas_agree
        assert weights.keys() == single_w.keys()
        for k, w in single_w.items():
            torch.testing.assert_close(weights[k], w, rtol=1e-4, atol=2e-5, msg=f"rank {rank}: {k}")
        assert len(records) == len(single_records) == workers.S3_EPOCHS
        for mine, ref in zip(records, single_records, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    # Rank 0's checkpoint (ZeRO's state consolidated) has the single-process layout and loads into
    # a plain model and optimizer. (ZeRO's run was then resumed for one more epoch, see below.)
    model = MnistCNN()
    opt = (Adam if optimizer == "adam" else AdamW)(model.parameters())
    hist, _ = load_checkpoint(ckpt / optimizer, model, opt)
    last = optimizer if optimizer == "adam" else f"{optimizer} resumed"
    assert hist.epochs_done == len(results[0][last][1])
    assert len(opt.state) == len(list(model.parameters()))
    torch.testing.assert_close(model.state_dict(), results[0][last][0], rtol=0, atol=0)


def test_ddp_zero_resumes_from_its_consolidated_checkpoint(ddp_runs):
    _, results = ddp_runs
    single_w, single_records = workers.s3_fit(optimizer="adamw", epochs=workers.S3_EPOCHS + 1)
    for rank in (0, 1):
        weights, records, replicas_agree = results[rank]["zero-adamw resumed"]
        assert replicas_agree and len(records) == workers.S3_EPOCHS + 1
        for k, w in single_w.items():
            torch.testing.assert_close(weights[k], w, rtol=1e-4, atol=2e-5, msg=f"rank {rank}: {k}")
        assert records[-1]["loss"] == pytest.approx(single_records[-1]["loss"], rel=1e-5)


def test_evaluate_sums_the_ranks_slices(ddp_runs):
    _, results = ddp_runs
    single = workers.s3_evaluate(results[0]["adam"][0])
    for rank in (0, 1):
        mine = results[rank]["evaluate"]
        assert mine.keys() == single.keys()
        assert mine["confusion_matrix"] == single["confusion_matrix"]
        assert sum(map(sum, mine["confusion_matrix"])) == 81
        for key in ("loss", "accuracy", "macro_f1"):
            assert mine[key] == pytest.approx(single[key], rel=1e-6), key


def test_a_dying_rank_fails_the_launch_and_leaves_a_loadable_checkpoint(tmp_path):
    with pytest.raises(WorkerFailed, match=r"rank 1 \(pid \d+\) was killed by SIGKILL"):
        launch(workers.ddp_dies, (str(tmp_path / "ckpt"),), nproc=2)
    model = MnistCNN()
    opt = Adam(model.parameters())
    hist, trainer_state = load_checkpoint(tmp_path / "ckpt", model, opt)
    assert hist.epochs_done == 2  # rank 1 died as epoch 3 began
    assert len(opt.state) == len(list(model.parameters())) and "rng" in trainer_state
