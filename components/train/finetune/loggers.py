"""Metrics loggers the training loop hands its numbers to.

A logger is any callable `(metrics: dict[str, float], step: int) -> None`; MLflow tracking
plugs in the same way. Keys are prefixed by where they come from: `train/` and `val/`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

MetricsLogger = Callable[[dict[str, float], int], None]


def null_logger(metrics: dict[str, float], step: int) -> None:
    """Discard metrics (the default when no logger is given)."""


class JsonlLogger:
    """Append one JSON object per call to a file: {"step", "time", **metrics}.

    Each line is flushed on write so a killed run keeps everything logged before the kill.
    """

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_jsonl(path: str | Path) -> list[dict[str, float]]:
    """All records of a JsonlLogger file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
