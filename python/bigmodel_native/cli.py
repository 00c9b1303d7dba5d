"""The ``bigmodel-native`` command line."""

from __future__ import annotations

import argparse
import sys


def _bench(args: argparse.Namespace) -> int:
    from .benchmarks import SUITES, run_suite

    names = list(SUITES) if args.suite == "all" else [args.suite]
    for name in names:
        run_suite(name, threads=args.threads, out_dir=args.out, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigmodel-native", description="PyTorch training kernels in Rust: benchmarks and training."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from .benchmarks import SUITES

    bench = sub.add_parser("bench", help="time torch and bigmodel_native side by side")
    bench.add_argument("suite", nargs="?", default="all", choices=[*SUITES, "all"])
    bench.add_argument("--threads", type=int, default=None, help="threads for both (default: all cores)")
    bench.add_argument("--out", default=None, help="directory for the JSON results (default: none)")
    bench.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    bench.set_defaults(func=_bench)
    from .training.cli import add_train_parser

    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
