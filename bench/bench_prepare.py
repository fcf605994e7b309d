"""`tuneline ingest` + `tuneline prepare` on CSVs of 10k, 100k and 1M rows, timed end to end
as a user runs them (validation, the versioned copy of the input, splits, near-duplicate
report), each size in its own process (bench/prepare_measure.py) for its own peak RSS.

Rows are real docstrings from the demo corpus, each made unique by a short suffix, with
1% bad rows mixed in so every validation path runs. Every text has ~N/4000 near-duplicate
variants, the worst case for the near-duplicate report. Goals: 1M rows in <= 60 s on
2 cores with peak RSS <= 2 GB, and time growing no faster than the rows from 100k to 1M.

    python -m bench.bench_prepare [--sizes 10000 100000 1000000] [--repeats 3 3 1]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, run_isolated, write_result
from bench.prepare_measure import COMMAND

GOAL_S = 60.0          # 1M rows, ingest + prepare
GOAL_RSS_MB = 2048.0   # peak resident set of either command at 1M rows
GOAL_GROWTH = 10.0     # seconds(1M) / seconds(100k): no worse than linear


def plot(sizes: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s["rows"] for s in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(rows, [s["median_s"] for s in sizes], "o-", label="ingest + prepare")
    left.loglog(rows, [s["prepare_s"] for s in sizes], "s--", label="prepare")
    left.loglog(rows, [s["ingest_s"] for s in sizes], "^--", label="ingest")
    base = sizes[0]
    left.loglog(rows, [base["median_s"] * r / base["rows"] for r in rows], ":", color="grey",
                label="linear from the smallest")
    left.axhline(GOAL_S, color="red", lw=0.8, label=f"goal at 1M: {GOAL_S:g} s")
    left.set(xlabel="CSV rows", ylabel="seconds (median)", title="time")
    left.legend(fontsize=8)
    right.semilogx(rows, [s["peak_rss_mb"] for s in sizes], "o-")
    right.axhline(GOAL_RSS_MB, color="red", lw=0.8, label=f"goal: {GOAL_RSS_MB:g} MB")
    right.set(xlabel="CSV rows", ylabel="MB", title="peak RSS of ingest / prepare")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, nargs="+", default=[3, 3, 1])
    args = parser.parse_args()
    repeats = (args.repeats + args.repeats[-1:] * len(args.sizes))[: len(args.sizes)]
    load_before = os.getloadavg()[0]
    sizes = [run_isolated("bench.prepare_measure", "--rows", str(n), "--repeats", str(r))
             for n, r in zip(args.sizes, repeats, strict=True)]
    by_rows = {s["rows"]: s for s in sizes}
    largest = by_rows.get(1_000_000)
    growth = (by_rows[1_000_000]["median_s"] / by_rows[100_000]["median_s"]
              if largest and 100_000 in by_rows else None)
    goals = {
        "seconds_1m": largest is not None and largest["median_s"] <= GOAL_S,
        "peak_rss_1m": largest is not None and largest["peak_rss_mb"] <= GOAL_RSS_MB,
        "growth_100k_to_1m": growth is not None and growth <= GOAL_GROWTH,
    }
    plot(sizes, RESULTS_DIR / "prepare.png")
    write_result("prepare", {
        "command": COMMAND, "sizes": sizes, "growth_100k_to_1m": growth,
        "goal_s": GOAL_S, "goal_rss_mb": GOAL_RSS_MB, "goal_growth": GOAL_GROWTH,
        "goals": goals, "goal_met": all(goals.values()), "plot": "bench/results/prepare.png",
        "loadavg_1m": {"before": load_before, "after": os.getloadavg()[0]},
    })


if __name__ == "__main__":
    main()
