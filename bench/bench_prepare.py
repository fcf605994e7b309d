"""`tuneline ingest` + `tuneline prepare` on a 100k-row CSV, timed end to end as a user
runs them (validation, the versioned copy of the input, splits, near-duplicate report).

Rows are real docstrings from the demo corpus, each made unique by a short suffix, with
1% bad rows mixed in so every validation path runs. Every text has ~25 near-duplicate
variants, the worst case for the near-duplicate report. Goal: under 30 s on this machine.

    .venv/bin/python -m bench.bench_prepare [--rows 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import PROJECT_ROOT, write_result
from components.config import DemoConfig
from components.data.demo import collect_corpus

GOAL_S = 30.0


def make_csv(path: Path, n_rows: int, seed: int = 0) -> None:
    labeled, _ = collect_corpus(DemoConfig())
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n_rows):
        row = labeled[i % len(labeled)]
        if rng.random() < 0.01:
            texts.append(rng.choice(["", "  ", row["text"]]))  # empty, blank, or a duplicate
        else:
            texts.append(f"{row['text']} (variant {i})")
        labels.append(row["label"])
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "rows.csv"
        make_csv(src, args.rows)
        cli = Path(sys.executable).parent / "tuneline"
        seconds = []
        for i in range(args.repeats):
            sets = ["--set", f"paths.input={tmp}/input{i}", "--set",
                    f"paths.prepared={tmp}/out{i}", "--set", f"paths.metrics={tmp}/m{i}"]
            t0 = time.perf_counter()
            for cmd in (["ingest", "--input", str(src)], ["prepare"]):
                proc = subprocess.run([str(cli), *cmd, *sets], cwd=PROJECT_ROOT,
                                      capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr)
            seconds.append(time.perf_counter() - t0)
        report = json.loads((Path(tmp) / "out0" / "report.json").read_text())
    median = statistics.median(seconds)
    write_result("prepare", {
        "command": "tuneline ingest --input rows.csv && tuneline prepare",
        "near_duplicate_rows": report["near_duplicates"]["rows"],
        "rows": args.rows, "seconds": seconds, "median_s": median,
        "rows_per_s": args.rows / median, "rows_ok": report["rows_ok"],
        "quarantined": report["quarantined"], "goal_s": GOAL_S, "goal_met": median < GOAL_S,
    })


if __name__ == "__main__":
    main()
