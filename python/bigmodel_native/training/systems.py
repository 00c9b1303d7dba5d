"""The seed systems as runnable recipes behind ``bigmodel-native train <system>``.

Each recipe builds its data and model, trains with :func:`.loop.fit` (or :func:`.gan.fit_gan`),
evaluates, and writes into the output folder: ``history.json`` (History + test metrics + which
implementation each building block used), ``checkpoint/``, and PNG plots.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import data as D
from .. import models as M
from ..models import _layers
from ..optim import Adam
from .callbacks import LRScheduler
from .gan import fit_gan
from .history import History
from .loop import evaluate, fit, predict
from .plots import plot_confusion_matrix, plot_history, plot_image_grid


@dataclass
class Defaults:
    epochs: int
    batch_size: int
    lr: float
    dataset: str


DEFAULTS: dict[str, Defaults] = {
    "s1": Defaults(1000, 32, 1e-3, "random"),
    "s2": Defaults(10, 64, 0.01, "auto"),
    "s3": Defaults(5, 64, 1e-3, "auto"),
    "s4": Defaults(10, 64, 1e-3, "cifar10"),
    "s5": Defaults(3, 64, 1e-4, "auto"),
    "s6": Defaults(10, 32, 1e-3, "random"),
    "s6-lm": Defaults(2, 32, 1e-3, "stdlib"),
    "s7": Defaults(10, 32, 1e-3, "random"),
}

DESCRIPTIONS = {
    "s1": "tiny dense classifier on random data",
    "s2": "MNIST-format MLP 784-256-128-64-10 (SGD)",
    "s3": "MNIST-format CNN (the default)",
    "s4": "CIFAR-10 CNN",
    "s5": "GAN on MNIST-format images",
    "s6": "Transformer, tutorial head on random tabular data",
    "s6-lm": "Transformer, character-level LM on the Python standard library",
    "s7": "small dense classifier on random labels",
}


class Run:
    """What every recipe shares: arguments, output folder, device, messages."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device)
        self.verbose = 0 if args.quiet else 1
        self.meta: dict[str, Any] = {
            "system": args.system,
            "implementations": dict(_layers.IMPLEMENTATIONS),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "device": args.device,
        }

    def say(self, msg: str) -> None:
        if not self.args.quiet:
            print(msg, flush=True)

    @property
    def ckpt(self) -> Path:
        return self.out / "checkpoint"

    def finish(self, hist: History, extra: dict[str, Any]) -> dict[str, Any]:
        hist.meta.update(self.meta)
        hist.meta.update(extra)
        hist.save(self.out / "history.json")
        return hist.meta


def _limit(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if n is None else (x[:n], y[:n])


def image_data(run: Run, side: int = 28):
    """(train, test, class names) for the MNIST-format systems, saying which data it used."""
    a = run.args
    name = a.dataset
    if name == "auto":
        name = "fashion-mnist" if D.fashion_mnist_available() else "digits"
        if name == "digits":
            run.say(
                f"note: Fashion-MNIST not found under {D.FASHION_MNIST_DIR} (Debian package "
                "dataset-fashion-mnist); using scikit-learn's digits resized to 28x28"
            )
    if name in ("fashion-mnist", "mnist"):
        directory = a.data_dir or (D.FASHION_MNIST_DIR if name == "fashion-mnist" else None)
        if directory is None:
            raise SystemExit("error: --dataset mnist needs --data-dir DIR holding the four MNIST IDX files")
        train = D.load_mnist_format(directory, "train")
        test = D.load_mnist_format(directory, "test")
        classes = list(D.FASHION_MNIST_CLASSES) if name == "fashion-mnist" else [str(i) for i in range(10)]
        where = str(directory)
    elif name == "digits":
        train, test = D.load_digits(side=side, seed=a.seed)
        classes = [str(i) for i in range(10)]
        where = "sklearn.datasets.load_digits (8x8, resized)"
    else:
        raise SystemExit(f"error: dataset {name!r} does not fit {a.system} (fashion-mnist, mnist or digits)")
    train = _limit(*train, a.limit)
    test = _limit(*test, a.limit)
    run.meta["dataset"] = name
    run.meta["data_source"] = where
    run.say(f"data: {name} from {where}: {len(train[0])} training / {len(test[0])} test images")
    return train, test, classes


def _classifier(
    run: Run,
    model: torch.nn.Module,
    train,
    test,
    optimizer,
    classes,
    *,
    val="test",
    checkpoint_every: int = 1,
    callbacks=(),
) -> tuple[History, dict[str, Any]]:
    a = run.args
    model.to(run.device)
    kwargs: dict[str, Any] = {"validation_data": test} if val == "test" else {"validation_split": 0.2}
    hist = fit(
        model,
        train,
        epochs=a.epochs,
        batch_size=a.batch_size,
        optimizer=optimizer,
        loss="cross_entropy",
        seed=a.seed,
        verbose=run.verbose,
        checkpoint_dir=run.ckpt,
        resume=a.resume,
        checkpoint_every=checkpoint_every,
        callbacks=callbacks,
        **kwargs,
    )
    result = evaluate(model, test, num_classes=len(classes))
    plot_history(hist, run.out / "curves.png", title=f"{a.system.upper()} on {run.meta.get('dataset')}")
    if len(classes) > 2:
        plot_confusion_matrix(result["confusion_matrix"], classes, run.out / "confusion.png")
    return hist, result


def run_s1(run: Run) -> dict[str, Any]:
    a = run.args
    x, y = D.random_classification(100, 10, 2, seed=a.seed)
    x_test, y_test = D.random_classification(50, 10, 2, seed=a.seed + 1)
    run.meta["dataset"] = "random: 100 x 10 standardised Gaussian features, random 0/1 labels"
    torch.manual_seed(a.seed)
    model = M.TinyDense()
    hist, res = _classifier(
        run,
        model,
        (x, y),
        (x_test, y_test),
        Adam(model.parameters(), lr=a.lr),
        ["0", "1"],
        val="split",
        checkpoint_every=50,
    )
    return run.finish(hist, {"test": res})


def run_s7(run: Run) -> dict[str, Any]:
    a = run.args
    x, y = D.random_classification(100, 10, 2, seed=a.seed, standardise=False)
    train, test = D.train_test_split(x, y, 0.2, seed=a.seed)
    run.meta["dataset"] = "random: 100 x 10 Gaussian features, random 0/1 labels (0.5 is the honest accuracy)"
    torch.manual_seed(a.seed)
    model = M.SmallDense()
    hist, res = _classifier(run, model, train, test, Adam(model.parameters(), lr=a.lr), ["0", "1"])
    return run.finish(hist, {"test": res})


def run_s2(run: Run) -> dict[str, Any]:
    train, test, classes = image_data(run)
    torch.manual_seed(run.args.seed)
    model = M.MnistMLP()
    hist, res = _classifier(
        run, model, train, test, torch.optim.SGD(model.parameters(), lr=run.args.lr), classes
    )
    return run.finish(hist, {"test": res})


def run_s3(run: Run) -> dict[str, Any]:
    train, test, classes = image_data(run)
    torch.manual_seed(run.args.seed)
    model = M.MnistCNN()
    hist, res = _classifier(run, model, train, test, Adam(model.parameters(), lr=run.args.lr), classes)
    return run.finish(hist, {"test": res})


def run_s4(run: Run) -> dict[str, Any]:
    a = run.args
    if a.dataset not in ("cifar10",):
        raise SystemExit(f"error: s4 trains on CIFAR-10 (--dataset cifar10), not {a.dataset!r}")
    if a.data_dir is None:
        raise SystemExit(
            "error: s4 needs --data-dir DIR holding CIFAR-10's binary version "
            "(data_batch_1..5.bin, test_batch.bin); it is not installed on this machine"
        )
    train = _limit(*D.load_cifar10(a.data_dir, "train"), a.limit)
    test = _limit(*D.load_cifar10(a.data_dir, "test"), a.limit)
    run.meta["dataset"] = "cifar10"
    run.meta["data_source"] = str(a.data_dir)
    run.say(f"data: CIFAR-10 from {a.data_dir}: {len(train[0])} training / {len(test[0])} test images")
    torch.manual_seed(a.seed)
    model = M.CifarCNN()
    classes = list(D.CIFAR10_CLASSES)
    hist, res = _classifier(run, model, train, test, Adam(model.parameters(), lr=a.lr), classes)
    n = min(25, len(test[0]))
    pred = predict(model, test[0][:n]).argmax(-1)
    titles = [f"{classes[int(t)]} - {classes[int(p)]}" for t, p in zip(test[1][:n], pred, strict=True)]
    colors = ["green" if int(t) == int(p) else "red" for t, p in zip(test[1][:n], pred, strict=True)]
    plot_image_grid(
        test[0][:n],
        run.out / "predictions.png",
        titles,
        ncols=5,
        title="true - predicted",
        title_colors=colors,
    )
    return run.finish(hist, {"test": res})


def run_s5(run: Run) -> dict[str, Any]:
    a = run.args
    train, _test, _classes = image_data(run)
    torch.manual_seed(a.seed)
    gen, disc = M.Generator().to(run.device), M.Discriminator().to(run.device)
    fixed = torch.randn(25, gen.noise_dim, generator=torch.Generator().manual_seed(a.seed)).to(run.device)

    def draw(epoch: int, logs: dict[str, float]) -> None:
        gen.eval()
        with torch.no_grad():
            imgs = gen(fixed)
        gen.train()
        plot_image_grid(
            imgs,
            run.out / f"samples_epoch_{epoch + 1:03d}.png",
            ncols=5,
            title=f"generated, epoch {epoch + 1}",
        )

    hist = fit_gan(
        gen,
        disc,
        train[0],
        epochs=a.epochs,
        batch_size=a.batch_size,
        g_optimizer=Adam(gen.parameters(), lr=a.lr),
        d_optimizer=Adam(disc.parameters(), lr=a.lr),
        seed=a.seed,
        verbose=run.verbose,
        on_epoch_end=draw,
        checkpoint_dir=run.ckpt,
        resume=a.resume,
    )
    plot_history(hist, run.out / "curves.png", title="S5 GAN losses")
    return run.finish(hist, {})


def run_s6(run: Run) -> dict[str, Any]:
    a = run.args
    x, y = D.random_regression(1000, 10, seed=a.seed)
    classify = a.task == "classification"
    if classify:
        y = (y > y.median()).long()
    train, test = D.train_test_split(x, y, 0.2, seed=a.seed)
    run.meta["dataset"] = f"random: 1000 x 10, 80/20 split, {a.task}"
    torch.manual_seed(a.seed)
    model = M.TabularTransformer(
        10, 2 if classify else 1, d_model=a.d_model, num_layers=a.layers, d_ff=4 * a.d_model
    ).to(run.device)
    opt = Adam(model.parameters(), lr=a.lr)
    sched = LRScheduler(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9))
    hist = fit(
        model,
        train,
        epochs=a.epochs,
        batch_size=a.batch_size,
        optimizer=opt,
        loss="cross_entropy" if classify else "mse",
        validation_data=test,
        seed=a.seed,
        verbose=run.verbose,
        callbacks=[sched],
        checkpoint_dir=run.ckpt,
        resume=a.resume,
    )
    res = evaluate(model, test, loss="cross_entropy" if classify else "mse")
    if not classify:
        res["mean_predictor_mse"] = float(((test[1] - train[1].mean()) ** 2).mean())
    plot_history(hist, run.out / "curves.png", title=f"S6 tutorial ({a.task})")
    return run.finish(hist, {"test": res})


def run_s6_lm(run: Run) -> dict[str, Any]:
    a = run.args
    corpus = D.load_stdlib_corpus(max_chars=a.max_chars)
    baseline = corpus.unigram_loss()
    run.meta["dataset"] = f"Python standard library sources, {len(corpus.train) + len(corpus.val)} characters"
    run.say(
        f"data: {len(corpus.train)} training / {len(corpus.val)} validation characters, "
        f"vocabulary {corpus.vocab_size}; unigram baseline {baseline:.3f} nats/char"
    )
    train = corpus.windows("train", a.context)
    val = corpus.windows("val", a.context)
    train = _limit(*train, a.limit)
    torch.manual_seed(a.seed)
    model = M.CharTransformerLM(
        corpus.vocab_size, context=a.context, d_model=a.d_model, num_layers=a.layers
    ).to(run.device)
    opt = Adam(model.parameters(), lr=a.lr)
    sched = LRScheduler(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7))
    hist = fit(
        model,
        train,
        epochs=a.epochs,
        batch_size=a.batch_size,
        optimizer=opt,
        loss="cross_entropy",
        validation_data=val,
        seed=a.seed,
        verbose=run.verbose,
        callbacks=[sched],
        checkpoint_dir=run.ckpt,
        resume=a.resume,
    )
    for rec in hist.records:
        rec["perplexity"] = float(torch.tensor(rec["loss"]).exp())
        rec["val_perplexity"] = float(torch.tensor(rec["val_loss"]).exp())
    prompt = corpus.encode("def ")
    text = corpus.decode(model.generate(prompt, 400, generator=torch.Generator().manual_seed(a.seed)))
    (run.out / "sample.txt").write_text(text + "\n")
    run.say("sample:\n" + text)
    plot_history(hist, run.out / "curves.png", title="S6 char-LM on the Python standard library")
    tokens_per_s = [r["samples_per_s"] * a.context for r in hist.records]
    return run.finish(
        hist,
        {
            "unigram_baseline_loss": baseline,
            "sample": text,
            "tokens_per_s": tokens_per_s,
            "vocab_size": corpus.vocab_size,
        },
    )


RECIPES = {
    "s1": run_s1,
    "s2": run_s2,
    "s3": run_s3,
    "s4": run_s4,
    "s5": run_s5,
    "s6": run_s6,
    "s6-lm": run_s6_lm,
    "s7": run_s7,
}


def summary_table(meta: dict[str, Any], hist_path: Path) -> str:
    """The final table: one row per epoch, then the test metrics."""
    hist = History.load(hist_path)
    keys = [
        k
        for k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_perplexity", "d_loss", "g_loss")
        if k in hist.history
    ]
    lines = ["epoch " + " ".join(f"{k:>14s}" for k in keys) + f" {'time':>8s} {'samples/s':>10s}"]
    records = hist.records
    if len(records) > 20:  # long runs (S1: 1000 epochs): every k-th epoch and the last
        k = -(-len(records) // 15)
        records = [r for i, r in enumerate(records) if i % k == 0 or i == len(records) - 1]
    for r in records:
        vals = " ".join(f"{r[k]:14.4f}" if r.get(k) is not None else f"{'-':>14s}" for k in keys)
        lines.append(f"{int(r['epoch']):5d} {vals} {r['time_s']:7.1f}s {r['samples_per_s']:10.0f}")
    test = meta.get("test")
    if test:
        lines.append("")
        for k in ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1", "mean_predictor_mse"):
            if k in test:
                pct = f"  ({100 * test[k]:.2f}%)" if k == "accuracy" else ""
                lines.append(f"test {k:18s} {test[k]:.4f}{pct}")
        if "f1" in test and len(test["f1"]) <= 10:
            lines.append(
                "per class (precision / recall / F1): "
                + ", ".join(
                    f"{i}: {p:.2f}/{r:.2f}/{f:.2f}"
                    for i, (p, r, f) in enumerate(
                        zip(test["precision"], test["recall"], test["f1"], strict=True)
                    )
                )
            )
    if "unigram_baseline_loss" in meta:
        lines.append(
            f"\nunigram baseline {meta['unigram_baseline_loss']:.4f} nats/char; "
            f"tokens/s per epoch {[round(t) for t in meta['tokens_per_s']]}"
        )
    return "\n".join(lines)


def dump(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=2, default=str)
