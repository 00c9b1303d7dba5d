"""bigmodel_native.optim.Adam/AdamW under FSDP2 (DTensor parameters) and ZeroRedundancyOptimizer.

Two gloo processes on CPU train the same small model (uneven shapes, so that shards differ in size
and one rank holds an empty shard) on different data per rank, once with our optimizer and once with
torch's, from the same weights; parameters and the optimizer state's layout must match.
"""

from __future__ import annotations

import pytest
import torch
from bigmodel_native.training.launch import launch

from . import workers


@pytest.fixture(scope="module")
def results() -> dict[int, dict[str, object]]:
    return launch(workers.fsdp_and_zero, (), nproc=2)


@pytest.mark.parametrize("name", list(workers.OPTIMIZERS))
@pytest.mark.parametrize("wrapper", ["fsdp", "zero"])
def test_matches_torch(results, wrapper, name):
    for rank in (0, 1):
        diff = results[rank][f"{wrapper} {name} max diff"]
        assert diff <= 1e-6, f"rank {rank}: {wrapper} with our {name} differs from torch's by {diff}"


@pytest.mark.parametrize("name", list(workers.OPTIMIZERS))
def test_fsdp_state_dict_layout_is_torchs(results, name):
    for rank in (0, 1):
        ours, theirs = results[rank][f"fsdp {name} layout"]
        assert ours == theirs
        assert {entry[2] for entry in ours} == {"DTensor", "Tensor"}  # moments sharded, step a scalar
        assert all(entry[3] == ("S(0)",) for entry in ours if entry[2] == "DTensor")
    # The sharding really is uneven: rank 1 holds 3 of Linear(5, 7)'s 7 rows and none of the last layer.
    assert results[0]["fsdp AdamW local shapes"][0] == (4, 5)
    assert results[1]["fsdp AdamW local shapes"][0] == (3, 5)
    assert results[1]["fsdp AdamW local shapes"][-2:] == [(0, 3), (0,)]


@pytest.mark.parametrize("name", list(workers.OPTIMIZERS))
def test_zero_consolidated_state_dict_is_torchs(results, name):
    assert results[0][f"zero {name} ours local optimizer"] == "bigmodel_native.optim.adam"
    assert results[0][f"zero {name} torch local optimizer"].startswith("torch.optim")
    ours, theirs = results[0][f"zero {name} layout"]
    assert ours == theirs and len(ours) > 0


def test_gradients_placed_unlike_their_parameters_are_redistributed(results):
    for rank in (0, 1):
        assert results[rank]["redistributed grads max diff"] <= 1e-6


def test_plain_state_for_dtensor_param_is_an_error(results):
    for rank in (0, 1):
        assert "must be a DTensor" in results[rank]["mixed error"]


def test_fsdp2_s3_with_our_adamw_matches_one_process_with_torchs(results):
    """S3 under FSDP2 (gradients reduce-scattered, our AdamW on the shards) = one process, torch's AdamW."""
    single = workers.s3_adamw(workers.fsdp_s3_batches())
    for rank in (0, 1):
        sharded = results[rank]["fsdp s3"]
        assert sharded.keys() == single.keys()
        for k, w in single.items():
            torch.testing.assert_close(sharded[k], w, rtol=1e-4, atol=2e-5, msg=f"rank {rank}: {k}")


def test_fit_trains_an_fsdp2_model_like_one_process(results):
    """``fit`` inside a process group leaves an FSDP2 model unwrapped (FSDP2 syncs the gradients)."""
    single_w, single_records = workers.s3_fit()
    single_test = workers.s3_evaluate(single_w)
    for rank in (0, 1):
        weights, records, test, refusal = results[rank]["fsdp fit"]
        assert "train it without checkpoint_dir" in refusal
        for k, w in single_w.items():
            torch.testing.assert_close(weights[k], w, rtol=1e-4, atol=2e-5, msg=f"rank {rank}: {k}")
        for mine, ref in zip(records, single_records, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
        assert test["accuracy"] == pytest.approx(single_test["accuracy"])
        assert test["loss"] == pytest.approx(single_test["loss"], rel=1e-4)
