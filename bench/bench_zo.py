"""Zeroth-order fine-tuning benchmark: speed and memory of a full-parameter MeZO step.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_zo [--rounds 5] [--repeats 12]

Speed/memory (MiniLM-L6, batch 16, seq 64, params.yaml threads): every measurement is its
own process (bench/zo_measure.py); forward and MeZO processes alternate for `rounds`
rounds so both sides see the same machine load, and the ratios use medians over all
samples. A cross-check alternates forward and MeZO step inside single processes (a
load change then hits both sides alike); the step goal must hold in both. Goals: MeZO
step / forward <= 2.2 and MeZO phase-peak RSS / inference phase-peak RSS <= 1.05. A
textbook in-place MeZO step and an AdamW step are measured once for reference. Results go
to bench/results/zo.json. Accuracy within a CPU budget, for every zeroth-order strategy and
target, is bench/bench_zo_budget.py.
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import run_isolated, write_result

GOAL_STEP_RATIO = 2.2
GOAL_RSS_RATIO = 1.05


def speed_rounds(rounds: int, repeats: int) -> dict:
    """Alternate forward / mezo processes; pool their samples."""
    runs: dict[str, list[dict]] = {"forward": [], "mezo": []}
    for _ in range(rounds):
        for mode in runs:
            runs[mode].append(run_isolated("bench.zo_measure", "speed", mode,
                                           "--repeats", str(repeats)))
    pooled = {}
    for mode, results in runs.items():
        samples = [s for r in results for s in r["samples_ms"]]
        pooled[mode] = {
            "median_ms": statistics.median(samples),
            "per_process_median_ms": [r["median_ms"] for r in results],
            "phase_peak_rss_mb": statistics.median(r["phase_peak_rss_mb"] for r in results),
            "process_peak_rss_mb": statistics.median(r["process_peak_rss_mb"] for r in results),
            "cpu_seconds_per_call": statistics.median(r["cpu_seconds_per_call"]
                                                      for r in results),
            "n_samples": len(samples)}
    return pooled


def reference_runs(repeats: int) -> dict:
    out = {}
    for mode in ("mezo_naive", "adamw"):
        r = run_isolated("bench.zo_measure", "speed", mode, "--repeats", str(repeats))
        out[mode] = {k: r[k] for k in ("median_ms", "p95_ms", "phase_peak_rss_mb",
                                       "process_peak_rss_mb", "cpu_seconds_per_call")}
    return out


def interleaved_runs(rounds: int, repeats: int) -> dict:
    """Forward and MeZO alternating inside each process: the same-moment cross-check."""
    results = [run_isolated("bench.zo_measure", "speed", "interleaved",
                            "--repeats", str(repeats)) for _ in range(rounds)]
    fwd = [s for r in results for s in r["forward_samples_ms"]]
    step = [s for r in results for s in r["mezo_samples_ms"]]
    return {"forward_median_ms": statistics.median(fwd),
            "mezo_median_ms": statistics.median(step),
            "ratio": statistics.median(step) / statistics.median(fwd),
            "per_process_ratio": [r["ratio_of_medians"] for r in results],
            "n_pairs": len(fwd)}


def judge(speed: dict, same_process: dict) -> dict:
    """Ratios against the goals.

    The step goal is judged on separate processes (the issue's method) and must also hold
    in the interleaved same-process check. A MeZO step runs two forward passes, so a
    ratio below ~1.9 means the load changed between samples: such a timing is reported
    as invalid rather than as a met goal.
    """
    step_ratio = speed["mezo"]["median_ms"] / speed["forward"]["median_ms"]
    check = same_process["ratio"]
    rss_ratio = speed["mezo"]["phase_peak_rss_mb"] / speed["forward"]["phase_peak_rss_mb"]
    valid = step_ratio >= 1.9 and check >= 1.9
    return {"mezo_step_over_forward": step_ratio,
            "mezo_step_over_forward_interleaved": check,
            "mezo_peak_rss_over_inference": rss_ratio,
            "goal_step_ratio": GOAL_STEP_RATIO, "goal_rss_ratio": GOAL_RSS_RATIO,
            "step_timing_valid": valid,
            "step_ratio_met": valid and max(step_ratio, check) <= GOAL_STEP_RATIO,
            "rss_ratio_met": rss_ratio <= GOAL_RSS_RATIO}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()

    speed = speed_rounds(args.rounds, args.repeats)
    same_process = interleaved_runs(max(1, args.rounds // 2), args.repeats)
    result = {
        "setup": {"model": "all-MiniLM-L6-v2 (packaged)", "batch": 16, "seq": 64,
                  "rounds": args.rounds, "repeats_per_process": args.repeats},
        "speed": speed,
        "interleaved": same_process,
        "reference": reference_runs(max(3, args.repeats // 3)),
        "ratios": judge(speed, same_process),
    }
    write_result("zo", result)


if __name__ == "__main__":
    main()
