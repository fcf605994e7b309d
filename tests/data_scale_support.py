"""The demo corpus with every kind of bad row mixed in: the input the streaming prepare is
compared on against the figures the whole-file prepare produced (tests/data/)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).parent / "data" / "prepare_reference.json"


def reference_rows(demo_jsonl: Path, seed: int = 3) -> tuple[list[dict], list[str]]:
    """(rows for a CSV, extra malformed JSONL lines): demo rows with bad rows mixed in."""
    demo = [json.loads(line) for line in demo_jsonl.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    rows = []
    for i, row in enumerate(demo):
        rows.append({"text": row["text"], "label": row["label"]})
        pick = rng.random()
        if pick < 0.01:
            rows.append({"text": "  ", "label": row["label"]})                 # empty
        elif pick < 0.02:
            rows.append({"text": row["text"], "label": row["label"]})          # duplicate
        elif pick < 0.025:
            rows.append({"text": "  " + row["text"], "label": "other"})        # conflicting
        elif pick < 0.03:
            rows.append({"text": f"row {i} without a label", "label": ""})     # missing label
        elif pick < 0.035:
            rows.append({"text": row["text"] + " again, lightly edited", "label": row["label"]})
    return rows, ["{not json", "[1, 2]"]


def write_reference_inputs(demo_jsonl: Path, folder: Path) -> dict[str, Path]:
    rows, malformed = reference_rows(demo_jsonl)
    csv, jsonl = folder / "ref.csv", folder / "ref.jsonl"
    pd.DataFrame(rows).to_csv(csv, index=False)
    lines = [json.dumps(r) for r in rows]
    lines.insert(len(lines) // 2, malformed[0])
    lines.insert(len(lines) - 5, malformed[1])
    jsonl.write_text("\n".join(lines) + "\n")
    return {"csv": csv, "jsonl": jsonl}


def prepared_digest(out: Path, report: dict) -> dict:
    """What must not change: split files byte for byte, quarantine file, counts."""
    files = ["train.jsonl", "validation.jsonl", "test.jsonl", "quarantine.jsonl", "labels.json"]
    return {"sha256": {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in files},
            **{k: report[k] for k in ("rows_in", "rows_ok", "quarantined", "split_sizes")}}
