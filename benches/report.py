"""Markdown tables of the recorded benchmark results, for the README.

    .venv/bin/python benches/report.py            # every benches/results/*.json
    .venv/bin/python benches/report.py adam ce    # some suites

Each row is one case: our median, then each torch implementation's median and how many times
faster ours is ("x" > 1 means ours is faster). The figures are the ones the benchmark gate
recorded, with the machine they came from; nothing is re-measured here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
OURS = "bigmodel_native"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def suite_table(path: Path) -> str:
    data = json.loads(path.read_text())
    if not isinstance(data.get("cases"), list):  # the GPU suites' own layout (benches/bench_gpu*.py)
        return ""
    cases = [c for c in data["cases"] if OURS in c.get("providers", {})]
    if not cases:
        return ""
    baselines: list[str] = []
    for case in cases:
        for name in case["providers"]:
            if name != OURS and name not in baselines:
                baselines.append(name)
    m = data["machine"]
    lines = [
        f"**{data['suite']}** ({m['cpu']}, {m['cores']} cores, {m['threads']} threads, "
        f"{m['isa']}, torch {m['torch']}; `{path.relative_to(path.parents[1])}`)",
        "",
        "| case | ours | " + " | ".join(baselines) + " |",
        "|---|---|" + "---|" * len(baselines),
    ]
    for case in cases:
        ours = case["providers"][OURS]["median_s"]
        cells = []
        for name in baselines:
            base = case["providers"].get(name)
            if base is None:
                cells.append("")
            else:
                cells.append(f"{_ms(base['median_s'])} (**{base['median_s'] / ours:.2f}x**)")
        lines.append(f"| {case['case']} | {_ms(ours)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    paths = [RESULTS / f"{s}.json" for s in argv] if argv else sorted(RESULTS.glob("*.json"))
    for path in paths:
        table = suite_table(path)
        if table:
            print(table, end="\n\n")


if __name__ == "__main__":
    main(sys.argv[1:])
