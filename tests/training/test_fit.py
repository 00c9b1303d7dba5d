"""fit / evaluate / predict: determinism, validation, metrics against scikit-learn, errors."""

from __future__ import annotations

import pytest
import torch
from bigmodel_native.data import random_classification, random_regression
from bigmodel_native.models import MnistCNN, SmallDense, TabularTransformer
from bigmodel_native.optim import Adam
from bigmodel_native.training import EarlyStopping, LRScheduler, evaluate, fit, predict
from sklearn.metrics import confusion_matrix as sk_cm
from sklearn.metrics import precision_recall_fscore_support


def _data(n=96):
    x, _ = random_classification(n, 10, 2, seed=0)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # learnable
    return x, y


def _run(seed=0, epochs=3, **kw):
    torch.manual_seed(123)
    m = SmallDense()
    h = fit(
        m,
        _data(),
        epochs=epochs,
        batch_size=16,
        optimizer=Adam(m.parameters(), lr=1e-2),
        seed=seed,
        verbose=0,
        **kw,
    )
    return m, h


def test_fit_learns_and_logs():
    m, h = _run(epochs=8, validation_split=0.25)
    rec = h.records
    assert [r["epoch"] for r in rec] == list(range(1, 9))
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time_s", "samples_per_s"} <= rec[0].keys()
    assert rec[-1]["loss"] < rec[0]["loss"]
    assert rec[-1]["accuracy"] > 0.85
    assert h.history["loss"] == [r["loss"] for r in rec]


def test_same_seed_same_history_and_weights():
    m1, h1 = _run(seed=7)
    m2, h2 = _run(seed=7)
    assert h1.without_timing() == h2.without_timing()
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    _, h3 = _run(seed=8)
    assert h3.without_timing() != h1.without_timing()


def test_validation_split_takes_the_tail():
    x, y = _data(100)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(10, 2)

        def forward(self, inp):
            if not self.training:
                seen.append(inp.clone())
            return self.lin(inp)

    fit(Spy(), (x, y), epochs=1, batch_size=10, validation_split=0.2, verbose=0, seed=0)
    assert torch.equal(torch.cat(seen), x[80:])


def test_metrics_match_sklearn():
    torch.manual_seed(0)
    m = SmallDense(num_classes=4)
    x = torch.randn(203, 10)
    y = torch.randint(0, 4, (203,))
    res = evaluate(m, (x, y), batch_size=50)
    pred = predict(m, x).argmax(-1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    assert res["precision"] == pytest.approx(p.tolist())
    assert res["recall"] == pytest.approx(r.tolist())
    assert res["f1"] == pytest.approx(f.tolist())
    assert res["support"] == s.tolist()
    assert res["macro_f1"] == pytest.approx(f.mean())
    assert res["confusion_matrix"] == sk_cm(y, pred, labels=range(4)).tolist()
    assert res["accuracy"] == pytest.approx(float((pred == y).float().mean()))
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(m(x), y).item()
    assert res["loss"] == pytest.approx(want, rel=1e-5)


def test_predict_softmax_and_eval_mode():
    m = TabularTransformer(10, 3, d_model=16, num_heads=8, num_layers=1, d_ff=32, dropout=0.5)
    m.train()
    x = torch.randn(9, 10)
    p1 = predict(m, x, batch_size=4, softmax=True)
    p2 = predict(m, x, batch_size=9, softmax=True)
    assert torch.allclose(p1, p2, atol=1e-6)  # dropout off in predict
    assert torch.allclose(p1.sum(-1), torch.ones(9))
    assert m.training  # restored


def test_regression_with_mse_and_lr_decay():
    x, y = random_regression(200, 10, seed=0)
    torch.manual_seed(0)
    m = TabularTransformer(10, 1, d_model=16, num_heads=8, num_layers=1, d_ff=32, dropout=0.0)
    opt = Adam(m.parameters(), lr=3e-3)
    sched = LRScheduler(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5))
    h = fit(
        m,
        (x[:160], y[:160]),
        epochs=4,
        batch_size=32,
        optimizer=opt,
        loss="mse",
        validation_data=(x[160:], y[160:]),
        callbacks=[sched],
        seed=0,
        verbose=0,
    )
    assert "accuracy" not in h.records[0]
    assert [r["lr"] for r in h.records] == pytest.approx([3e-3, 1.5e-3, 7.5e-4, 3.75e-4])
    assert h.records[-1]["val_loss"] < float(y[160:].var())
    assert set(evaluate(m, (x[160:], y[160:]), loss="mse")) == {"loss"}


def test_early_stopping():
    stopper = EarlyStopping(monitor="loss", patience=1, min_delta=10.0)
    _, h = _run(epochs=10, callbacks=[stopper])
    assert h.epochs_done == 2


def test_conv_model_one_step():
    torch.manual_seed(0)
    m = MnistCNN()
    x = torch.rand(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    h = fit(m, (x, y), epochs=1, batch_size=4, verbose=0, seed=0)
    assert h.records[0]["loss"] > 0


def test_bad_arguments():
    m = SmallDense()
    x, y = _data()
    with pytest.raises(ValueError, match="validation_split or validation_data"):
        fit(m, (x, y), epochs=1, validation_split=0.2, validation_data=(x, y), verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        fit(m, (x, y), epochs=1, validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        fit(m, (x, y), epochs=1, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="3 targets"):
        fit(m, (x, y[:3]), epochs=1, verbose=0)
    with pytest.raises(TypeError, match="pair"):
        fit(m, x, epochs=1, verbose=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown loss"):
        fit(m, (x, y), epochs=1, loss="hinge", verbose=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit(m, (x, y), epochs=1, optimizer="lbfgs", verbose=0)
    with pytest.raises(ValueError, match="unknown metrics"):
        fit(m, (x, y), epochs=1, metrics=["auc"], verbose=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(m, (x, y), epochs=1, resume=True, verbose=0)


def test_verbose_prints_epoch_lines(capsys):
    torch.manual_seed(0)
    m = SmallDense()
    fit(m, _data(), epochs=2, batch_size=16, verbose=2, seed=0)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "samples/s" in out
    fit(m, _data(), epochs=1, batch_size=16, verbose=0, seed=0)
    assert capsys.readouterr().out == ""
