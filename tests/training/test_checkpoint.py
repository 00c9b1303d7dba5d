"""Checkpoints: safetensors weights, atomic writes, and resume reproducing the uninterrupted run."""

from __future__ import annotations

import os

import pytest
import torch
from bigmodel_native.models import Discriminator, Generator, TabularTransformer
from bigmodel_native.optim import Adam
from bigmodel_native.training import History, LRScheduler, fit, fit_gan, latest_checkpoint, load_checkpoint
from bigmodel_native.training import checkpoint as ckpt_mod
from safetensors.torch import load_file


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 10, generator=g)
    return x, (x[:, 0] - x[:, 3] > 0).long()


def _setup():
    torch.manual_seed(5)
    # Dropout on, so that resuming must also restore the random stream to match.
    m = TabularTransformer(10, 2, d_model=16, num_heads=8, num_layers=1, d_ff=32, dropout=0.2)
    opt = Adam(m.parameters(), lr=3e-3)
    sched = LRScheduler(torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7))
    return m, opt, sched


def _fit(m, opt, sched, epochs, **kw):
    x, y = _data()
    return fit(
        m,
        (x[:96], y[:96]),
        epochs=epochs,
        batch_size=16,
        optimizer=opt,
        callbacks=[sched],
        validation_data=(x[96:], y[96:]),
        seed=11,
        verbose=0,
        **kw,
    )


def test_resume_matches_uninterrupted_run(tmp_path):
    m_full, opt, sched = _setup()
    full = _fit(m_full, opt, sched, 5)

    m, opt, sched = _setup()
    _fit(m, opt, sched, 2, checkpoint_dir=tmp_path)
    assert latest_checkpoint(tmp_path).name == "epoch-0002"
    # A fresh process would start from scratch objects: new model, optimizer and scheduler.
    torch.manual_seed(999)
    m2, opt2, sched2 = _setup()
    torch.manual_seed(4242)  # a different global RNG state: resume must not depend on it
    resumed = _fit(m2, opt2, sched2, 5, checkpoint_dir=tmp_path, resume=True)
    assert resumed.without_timing() == full.without_timing()
    for a, b in zip(m_full.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert latest_checkpoint(tmp_path).name == "epoch-0005"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "epoch-0005"]  # older pruned


def test_checkpoint_files(tmp_path):
    m, opt, sched = _setup()
    _fit(m, opt, sched, 1, checkpoint_dir=tmp_path)
    d = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in d.iterdir()) == [
        "history.json",
        "model.safetensors",
        "optimizer.pt",
        "trainer.pt",
    ]
    weights = load_file(d / "model.safetensors")
    assert set(weights) == set(m.state_dict())
    assert torch.equal(weights["head.weight"], m.head.weight.detach())
    assert History.load(d / "history.json").epochs_done == 1
    opt_state = torch.load(d / "optimizer.pt", weights_only=True)
    assert int(opt_state["state"][0]["step"]) == 6


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    m, opt, sched = _setup()
    h = _fit(m, opt, sched, 1, checkpoint_dir=tmp_path / "none-yet", resume=True)
    assert h.epochs_done == 1


def test_resume_when_already_done_trains_nothing(tmp_path):
    m, opt, sched = _setup()
    h1 = _fit(m, opt, sched, 2, checkpoint_dir=tmp_path)
    m2, opt2, sched2 = _setup()
    h2 = _fit(m2, opt2, sched2, 2, checkpoint_dir=tmp_path, resume=True)
    assert h2.records == h1.records


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m, opt, sched = _setup()
    _fit(m, opt, sched, 1, checkpoint_dir=tmp_path)
    before = load_file(latest_checkpoint(tmp_path) / "model.safetensors")

    real_replace = os.replace

    def crash_on_latest(src, dst):
        if str(dst).endswith("LATEST"):
            raise KeyboardInterrupt("killed while writing the pointer")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", crash_on_latest)
    m2, opt2, sched2 = _setup()
    with pytest.raises(KeyboardInterrupt):
        _fit(m2, opt2, sched2, 3, checkpoint_dir=tmp_path, resume=True)
    monkeypatch.undo()
    # LATEST still names the complete epoch-1 checkpoint, which loads intact.
    assert latest_checkpoint(tmp_path).name == "epoch-0001"
    m3, opt3, _ = _setup()
    hist, _state = load_checkpoint(tmp_path, m3, opt3)
    assert hist.epochs_done == 1
    for k, v in before.items():
        assert torch.equal(m3.state_dict()[k], v)


def test_crash_before_rename_leaves_no_visible_checkpoint(tmp_path, monkeypatch):
    def boom(model, filename):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_model", boom)
    m, opt, sched = _setup()
    with pytest.raises(OSError, match="disk full"):
        _fit(m, opt, sched, 1, checkpoint_dir=tmp_path)
    assert latest_checkpoint(tmp_path) is None
    assert load_checkpoint(tmp_path, m) is None


def test_latest_pointing_nowhere_is_an_error(tmp_path):
    (tmp_path / "LATEST").write_text("epoch-0009\n")
    with pytest.raises(FileNotFoundError, match="epoch-0009"):
        latest_checkpoint(tmp_path)


def test_gan_resume_matches(tmp_path):
    imgs = torch.rand(48, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def make():
        torch.manual_seed(1)
        g, d = Generator(width=16), Discriminator(width=8)
        return g, d, Adam(g.parameters(), lr=1e-4), Adam(d.parameters(), lr=1e-4)

    g, d, go, do = make()
    full = fit_gan(g, d, imgs, epochs=3, batch_size=16, g_optimizer=go, d_optimizer=do, seed=3, verbose=0)
    g, d, go, do = make()
    fit_gan(
        g,
        d,
        imgs,
        epochs=1,
        batch_size=16,
        g_optimizer=go,
        d_optimizer=do,
        seed=3,
        verbose=0,
        checkpoint_dir=tmp_path,
    )
    g, d, go, do = make()
    res = fit_gan(
        g,
        d,
        imgs,
        epochs=3,
        batch_size=16,
        g_optimizer=go,
        d_optimizer=do,
        seed=3,
        verbose=0,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    assert res.without_timing() == full.without_timing()
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= res.records[0].keys()
