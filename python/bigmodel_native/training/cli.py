"""``bigmodel-native train``: the seed systems from the command line (registered by ../cli.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_SYSTEM = "s3"
_IMAGES = ("auto", "fashion-mnist", "mnist", "digits")
#: The data each system can train on.
DATASETS = {
    "s1": ("random",),
    "s2": _IMAGES,
    "s3": _IMAGES,
    "s4": ("cifar10",),
    "s5": _IMAGES,
    "s6": ("random",),
    "s6-lm": ("stdlib",),
    "s7": ("random",),
}


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from .systems import DEFAULTS, DESCRIPTIONS

    systems = "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
    p = sub.add_parser(
        "train",
        help="train a seed system (default: S3 on Fashion-MNIST, else on scikit-learn's digits)",
        description=f"Train one of the seed systems ({systems}).",
    )
    p.add_argument("system", nargs="?", default=DEFAULT_SYSTEM, choices=list(DEFAULTS))
    p.add_argument(
        "--dataset",
        default=None,
        choices=["auto", "fashion-mnist", "mnist", "digits", "cifar10", "random", "stdlib"],
        help="data set (default: the system's own; 'auto' = Fashion-MNIST when installed, else digits)",
    )
    p.add_argument("--data-dir", default=None, help="folder of MNIST IDX files or CIFAR-10 .bin files")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=None, help="output folder (default: runs/<system>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and our kernels")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training/test samples")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the final table")
    p.add_argument(
        "--nproc", type=int, default=None, help="data-parallel processes (DDP; gloo on CPU, NCCL on GPU)"
    )
    p.add_argument("--task", default="regression", choices=["regression", "classification"], help="s6 head")
    p.add_argument("--d-model", type=int, default=None, help="s6/s6-lm width (s6: 512, s6-lm: 128)")
    p.add_argument("--layers", type=int, default=None, help="s6/s6-lm blocks (s6: 2, s6-lm: 4)")
    p.add_argument("--context", type=int, default=128, help="s6-lm context length")
    p.add_argument("--max-chars", type=int, default=600_000, help="s6-lm corpus size")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from ..models import _layers
    from .distributed import is_rank_zero
    from .launch import maybe_distribute
    from .systems import DEFAULTS, RECIPES, Run, summary_table

    if (code := maybe_distribute(args)) is not None:  # --nproc N / torchrun: run as N processes
        return code
    d = DEFAULTS[args.system]
    if args.threads is not None:
        from .. import set_num_threads

        if args.threads < 1:
            raise SystemExit(f"error: --threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "error: --device cuda was asked for, but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); use --device cpu"
        )
    args.epochs = d.epochs if args.epochs is None else args.epochs
    args.batch_size = d.batch_size if args.batch_size is None else args.batch_size
    args.lr = d.lr if args.lr is None else args.lr
    args.dataset = args.dataset or d.dataset
    allowed = DATASETS[args.system]
    if args.dataset not in allowed:
        raise SystemExit(f"error: {args.system} trains on {' or '.join(allowed)}, not {args.dataset!r}")
    lm = args.system == "s6-lm"
    args.d_model = args.d_model or (128 if lm else 512)
    args.layers = args.layers or (4 if lm else 2)
    args.out = args.out or str(Path("runs") / args.system)
    for name, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise SystemExit(f"error: {name} must be >= 1, got {value}")
    run = Run(args)
    run.say(
        f"bigmodel-native train {args.system}: epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, "
        f"device {args.device}, {torch.get_num_threads()} threads, output {args.out}"
    )
    for line in _layers.describe():
        run.say(f"  {line}")
    t0 = time.perf_counter()
    meta = RECIPES[args.system](run)
    if not is_rank_zero():
        return 0
    print(f"\n== {args.system} done in {time.perf_counter() - t0:.1f}s ==")
    print(summary_table(meta, Path(args.out) / "history.json"))
    print(
        f"\nwrote {args.out}/: history.json, checkpoint/, "
        + ", ".join(sorted(p.name for p in Path(args.out).glob("*.png"))[:6])
        + (", sample.txt" if lm else "")
    )
    return 0
