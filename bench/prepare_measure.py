"""One size of the prepare benchmark, in its own process (bench/bench_prepare.py).

    python -m bench.prepare_measure --rows N [--repeats R]

Writes an N-row CSV synthesised from the demo texts, then runs `tuneline ingest --input`
and `tuneline prepare` on it as a user does (each a fresh process), R times. Peak RSS is
the largest resident set of those commands (the kernel's ru_maxrss of waited-for
children); making the CSV is not counted. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import PROJECT_ROOT
from components.config import DemoConfig
from components.data.demo import collect_corpus

COMMAND = "tuneline ingest --input rows.csv && tuneline prepare"


def make_csv(path: Path, n_rows: int, seed: int = 0) -> None:
    """Demo texts made unique by a suffix, every one with ~N/4000 near-duplicate variants
    (the worst case for the near-duplicate report), 1% bad rows (empty, blank, duplicate)."""
    labeled, _ = collect_corpus(DemoConfig())
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n_rows):
        row = labeled[i % len(labeled)]
        if rng.random() < 0.01:
            texts.append(rng.choice(["", "  ", row["text"]]))
        else:
            texts.append(f"{row['text']} (variant {i})")
        labels.append(row["label"])
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    cli = Path(sys.executable).parent / "tuneline"
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        src = Path(tmp) / "rows.csv"
        make_csv(src, args.rows)
        for i in range(args.repeats):
            sets = ["--set", f"paths.input={tmp}/input{i}", "--set",
                    f"paths.prepared={tmp}/out{i}", "--set", f"paths.metrics={tmp}/m{i}"]
            times = {}
            cpu0 = _children_cpu()
            for name, cmd in (("ingest", ["ingest", "--input", str(src)]),
                              ("prepare", ["prepare"])):
                t0 = time.perf_counter()
                proc = subprocess.run([str(cli), *cmd, *sets], cwd=PROJECT_ROOT,
                                      capture_output=True, text=True, check=False)
                times[name] = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr)
            times["cpu"] = _children_cpu() - cpu0
            runs.append(times)
        report = json.loads((Path(tmp) / "out0" / "report.json").read_text())
        input_mb = src.stat().st_size / 1e6
    totals = [r["ingest"] + r["prepare"] for r in runs]
    median = statistics.median(totals)
    print(json.dumps({
        "rows": args.rows, "input_mb": round(input_mb, 1), "seconds": totals,
        "median_s": median, "rows_per_s": args.rows / median,
        "ingest_s": statistics.median(r["ingest"] for r in runs),
        "prepare_s": statistics.median(r["prepare"] for r in runs),
        # CPU seconds (user + system) of both commands: what other load on the cores
        # does not inflate, unlike the seconds above.
        "cpu_s": statistics.median(r["cpu"] for r in runs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "rows_ok": report["rows_ok"], "quarantined": report["quarantined"],
        "near_duplicate_rows": report["near_duplicates"]["rows"],
    }))


if __name__ == "__main__":
    main()
