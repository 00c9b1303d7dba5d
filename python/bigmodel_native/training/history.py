"""The per-epoch record of a training run (Keras-like ``History``)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Keys that measure the machine rather than the training (excluded from determinism checks).
TIMING_KEYS = frozenset({"time_s", "samples_per_s"})


@dataclass
class History:
    """One dict per finished epoch.

    Keys: ``epoch``, ``loss``, metrics, ``val_*``, ``lr``, ``time_s``, ``samples_per_s``.
    """

    records: list[dict[str, float]] = field(default_factory=list)
    #: Free-form facts about the run (system, dataset, implementations, test metrics...).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs_done(self) -> int:
        return len(self.records)

    @property
    def history(self) -> dict[str, list[float]]:
        """Keras' view: metric name -> one value per epoch."""
        out: dict[str, list[float]] = {}
        for rec in self.records:
            for k, v in rec.items():
                out.setdefault(k, []).append(v)
        return out

    def append(self, record: dict[str, float]) -> None:
        self.records.append(dict(record))

    def without_timing(self) -> list[dict[str, float]]:
        """The records less wall-clock figures: equal for two runs under the same seed."""
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in self.records]

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "history": self.history, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls([dict(r) for r in d.get("records", [])], dict(d.get("meta", {})))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes JSON atomically (temporary file + rename)."""
        atomic_write_bytes(Path(path), (json.dumps(_jsonable(self.to_dict()), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
