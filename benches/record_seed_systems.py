"""Records the seed systems' accuracy targets (not part of CI: it trains for several minutes).

    .venv/bin/python benches/record_seed_systems.py [--threads N] [--systems s3 s2 s6-lm]

Runs ``bigmodel-native train`` for each system with its defaults (S3: Fashion-MNIST, 5 epochs,
batch 64; S2: 10 epochs SGD; S6-LM: the CLI's small char-LM), writes
benches/results/seed_systems.json with the test figures and the machine, and copies the curves
plots to docs/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bigmodel_native.benchmarks.harness import machine_info
from bigmodel_native.cli import main

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"s3": 0.90, "s2": 0.86}


def main_(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--systems", nargs="+", default=["s3", "s2"])
    args = ap.parse_args(argv)
    out_json = ROOT / "benches" / "results" / "seed_systems.json"
    doc = json.loads(out_json.read_text()) if out_json.exists() else {"systems": {}}
    threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        for system in args.systems:
            out = Path(tmp) / system
            argv = ["train", system, "--out", str(out)]
            if threads:
                argv += ["--threads", str(threads)]
            t0 = time.perf_counter()
            main(argv)
            wall = time.perf_counter() - t0
            h = json.loads((out / "history.json").read_text())
            meta = h["meta"]
            rec: dict[str, object] = {
                "dataset": meta.get("dataset"),
                "epochs": meta["epochs"],
                "batch_size": meta["batch_size"],
                "lr": meta["lr"],
                "implementations": meta["implementations"],
                "wall_s": round(wall, 1),
                "per_epoch": h["records"],
            }
            test = meta.get("test")
            if test and "accuracy" in test:
                rec["test_accuracy"] = test["accuracy"]
                rec["test_macro_f1"] = test["macro_f1"]
            if system in TARGETS:
                rec["target_test_accuracy"] = TARGETS[system]
                rec["meets_target"] = bool(test and test["accuracy"] >= TARGETS[system])
            if "unigram_baseline_loss" in meta:
                rec["unigram_baseline_loss"] = meta["unigram_baseline_loss"]
                rec["epoch1_val_loss"] = h["records"][0]["val_loss"]
                rec["beats_unigram_by_epoch_1"] = h["records"][0]["val_loss"] < meta["unigram_baseline_loss"]
                rec["tokens_per_s"] = meta["tokens_per_s"]
                rec["sample"] = meta["sample"]
            # Systems are recorded in separate runs, possibly on different machines: each keeps its own.
            rec["machine"] = machine_info(threads or __import__("torch").get_num_threads())
            doc["systems"][system] = rec
            docs = ROOT / "docs"
            docs.mkdir(exist_ok=True)
            shutil.copy(out / "curves.png", docs / f"{system}_curves.png")
            if (out / "confusion.png").exists():
                shutil.copy(out / "confusion.png", docs / f"{system}_confusion.png")
            doc.pop("machine", None)
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
