"""Distributed training benchmark: bytes sent per step, and 1 -> 2 rank throughput.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_dist [--rounds 2]

For adamw (DDP: gradients all-reduced), mezo (each rank evaluates its slice of the batch
at the shared seed's perturbation; the two losses are all-reduced) and es (population 8
split over the ranks; the 16 fitness values are all-reduced), on MiniLM-L6 with one torch
thread a rank (bench/dist_measure.py):

- bytes handed to collectives per step and rank (payload; gloo adds its framing);
- training examples per second with 1 rank and with 2 ranks (per-rank batch 16, so the
  global batch doubles, as `finetune.nproc` does), 1-rank and 2-rank processes
  alternating for `rounds` rounds in one run; the ratio uses the medians.

Results go to bench/results/dist.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import PROJECT_ROOT, write_result
from bench.dist_measure import STRATEGIES
from components.io import read_json
from components.train.finetune.distributed import launch


def one_rank(out: Path, args: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, "-m", "bench.dist_measure", str(out), *args],
                   cwd=PROJECT_ROOT, env=env, check=True, capture_output=True, timeout=1800)
    return read_json(out)["results"]


def two_ranks(out: Path, args: list[str]) -> dict:
    launch(2, ["bench.dist_measure", str(out), *args], env={"PYTHONPATH": str(PROJECT_ROOT)})
    return read_json(out)["results"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--es-steps", type=int, default=2)
    ap.add_argument("--model", help="another backbone folder (a quick check; not written)")
    args = ap.parse_args()
    extra = ["--steps", str(args.steps), "--es-steps", str(args.es_steps)]
    extra += ["--model", args.model] if args.model else []
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            runs[1].append(one_rank(Path(tmp) / f"one-{r}.json", extra))
            runs[2].append(two_ranks(Path(tmp) / f"two-{r}.json", extra))
    out = {}
    for s in STRATEGIES:
        eps = {n: [run[s]["examples_per_s"] for run in runs[n]] for n in runs}
        first = runs[2][0][s]
        out[s] = {
            "bytes_sent_per_step_per_rank": first["bytes_sent_per_step_per_rank"],
            "trainable_params": first["trainable_params"],
            "examples_per_s_1_rank": statistics.median(eps[1]),
            "examples_per_s_2_ranks": statistics.median(eps[2]),
            "throughput_ratio_2_vs_1": statistics.median(eps[2]) / statistics.median(eps[1]),
            "per_round_examples_per_s": eps,
            "seconds_per_step_1_rank": statistics.median(
                run[s]["seconds_per_step"] for run in runs[1]),
            "seconds_per_step_2_ranks": statistics.median(
                run[s]["seconds_per_step"] for run in runs[2])}
    if args.model:
        print(json.dumps(out, indent=2))
        return
    write_result("dist", {
        "command": "flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_dist "
                   f"--rounds {args.rounds} --steps {args.steps} --es-steps {args.es_steps}",
        "setup": {"model": "all-MiniLM-L6-v2 + 10-class head (params.yaml trainable set: "
                           "embedding matrix frozen)",
                  "per_rank_batch": 16, "seq": 64, "threads_per_rank": 1,
                  "backend": "gloo on 127.0.0.1", "rounds": args.rounds,
                  "es_population": 8, "mezo": "spsa, 1 sample"},
        "strategies": out})


if __name__ == "__main__":
    main()
