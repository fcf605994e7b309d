"""Load, validate, quarantine and split labeled text; read prepared splits back.

Prepared folder layout (written by `prepare_dataset`, read by every later stage):
    train.jsonl / validation.jsonl / test.jsonl   one {"text": str, "label": str} per line
    labels.json                                   {"labels": [name, ...]}  index = class id
    report.json                                   rows_in, rows_ok, quarantined, class counts
    quarantine.jsonl                              every rejected row with its reason
"""

from __future__ import annotations

import json
from pathlib import Path

SPLITS = ("train", "validation", "test")


def load_label_map(prepared_dir: str | Path) -> list[str]:
    """Ordered class names; the position of a name is its class id."""
    return list(json.loads((Path(prepared_dir) / "labels.json").read_text())["labels"])


def load_split(prepared_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    """Texts and integer label ids of one prepared split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    labels = {name: i for i, name in enumerate(load_label_map(prepared_dir))}
    texts, ids = [], []
    with open(Path(prepared_dir) / f"{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(row["text"])
            ids.append(labels[row["label"]])
    return texts, ids
