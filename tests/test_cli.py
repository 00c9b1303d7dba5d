"""``bigmodel-native train``: every system end to end on tiny data, outputs, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bigmodel_native.cli import main
from bigmodel_native.data.cifar import write_cifar_batch
from bigmodel_native.data.idx import write_idx


def _train(tmp_path, *argv):
    out = tmp_path / "out"
    # Tiny tensors: one thread avoids OpenMP spin-waiting on a loaded 2-core machine.
    assert main(["train", *argv, "--out", str(out), "--quiet", "--threads", "1"]) == 0
    return out, json.loads((out / "history.json").read_text())


def test_s1_random(tmp_path, capsys):
    out, h = _train(tmp_path, "s1", "--epochs", "3")
    assert len(h["records"]) == 3 and "val_accuracy" in h["records"][0]
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "checkpoint" / "LATEST").read_text().strip() == "epoch-0003"
    assert 0 <= h["meta"]["test"]["accuracy"] <= 1
    text = capsys.readouterr().out
    assert "test accuracy" in text and "== s1 done" in text


def test_s3_on_mnist_format_files_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    for split, n in (("train", 64), ("t10k", 32)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    args = ["s3", "--dataset", "mnist", "--data-dir", str(d), "--batch-size", "32"]
    out, h1 = _train(tmp_path, *args, "--epochs", "1")
    assert h1["meta"]["dataset"] == "mnist" and len(h1["meta"]["test"]["confusion_matrix"]) == 10
    assert (out / "confusion.png").exists()
    out, h2 = _train(tmp_path, *args, "--epochs", "2", "--resume")
    assert [r["epoch"] for r in h2["records"]] == [1, 2]
    assert h2["records"][0]["loss"] == h1["records"][0]["loss"]
    fresh = tmp_path / "fresh"
    assert main(["train", *args, "--epochs", "2", "--out", str(fresh), "--quiet"]) == 0
    h3 = json.loads((fresh / "history.json").read_text())
    assert [r["loss"] for r in h3["records"]] == [r["loss"] for r in h2["records"]]


def test_s2_digits(tmp_path, capsys):
    out, h = _train(tmp_path, "s2", "--dataset", "digits", "--epochs", "2", "--limit", "200")
    assert h["meta"]["dataset"] == "digits" and h["meta"]["implementations"]["Adam"] == "bigmodel_native"
    assert len(h["records"]) == 2


def test_s4_cifar_binary(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar"
    d.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_batch(
            d / name, rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 8)
        )
    out, h = _train(tmp_path, "s4", "--dataset", "cifar10", "--data-dir", str(d), "--epochs", "1")
    assert (out / "predictions.png").stat().st_size > 1000
    assert "val_accuracy" in h["records"][0]


def test_dataset_must_fit_the_system(tmp_path):
    with pytest.raises(SystemExit, match="s1 trains on random, not 'digits'"):
        main(["train", "s1", "--dataset", "digits", "--out", str(tmp_path), "--quiet"])


def test_s4_without_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="CIFAR-10"):
        main(["train", "s4", "--dataset", "cifar10", "--out", str(tmp_path), "--quiet"])


def test_s5_gan_samples(tmp_path):
    out, h = _train(
        tmp_path, "s5", "--dataset", "digits", "--epochs", "2", "--limit", "64", "--batch-size", "32"
    )
    assert (out / "samples_epoch_001.png").exists() and (out / "samples_epoch_002.png").exists()
    assert {"d_loss", "g_loss"} <= h["records"][0].keys()


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_s6_tutorial(tmp_path, task):
    out, h = _train(tmp_path, "s6", "--task", task, "--epochs", "2", "--d-model", "16", "--layers", "1")
    assert len(h["records"]) == 2
    assert h["records"][1]["lr"] == pytest.approx(0.9 * h["records"][0]["lr"])  # decay
    assert ("accuracy" in h["meta"]["test"]) == (task == "classification")


def test_s6_char_lm(tmp_path):
    out, h = _train(
        tmp_path,
        "s6-lm",
        "--epochs",
        "1",
        "--d-model",
        "16",
        "--layers",
        "1",
        "--context",
        "16",
        "--max-chars",
        "20000",
        "--limit",
        "64",
    )
    assert (out / "sample.txt").read_text().startswith("def ")
    assert h["meta"]["unigram_baseline_loss"] > 0 and "val_perplexity" in h["records"][0]


def test_s7(tmp_path):
    _, h = _train(tmp_path, "s7", "--epochs", "2")
    assert len(h["records"]) == 2


def test_cuda_without_cuda_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda"):
        main(["train", "s7", "--device", "cuda", "--out", str(tmp_path)])


def test_default_is_s3_and_says_which_data(tmp_path, monkeypatch, capsys):
    from bigmodel_native.training import cli as train_cli
    from bigmodel_native.training import systems

    parser_args = {}

    def fake_s3(run):
        parser_args.update(vars(run.args))
        train, test, _ = systems.image_data(run)
        return run.finish(
            systems.History([{"epoch": 1, "loss": 1.0, "time_s": 1.0, "samples_per_s": 1.0}]), {}
        )

    monkeypatch.setitem(systems.RECIPES, "s3", fake_s3)
    monkeypatch.setattr(systems.D, "fashion_mnist_available", lambda *a, **k: False)
    assert main(["train", "--out", str(tmp_path), "--limit", "10"]) == 0
    assert train_cli.DEFAULT_SYSTEM == "s3" and parser_args["system"] == "s3"
    assert parser_args["epochs"] == 5 and parser_args["batch_size"] == 64
    assert "using scikit-learn's digits" in capsys.readouterr().out


def test_bench_subcommand_kept():
    from bigmodel_native.cli import build_parser

    assert build_parser().parse_args(["bench", "adam"]).suite == "adam"
