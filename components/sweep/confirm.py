"""Is the sweep's winner better than the params it started from, or was it a lucky seed?

A sweep ranks trials by one training run each, on one validation split: the best of
sixteen noisy scores is biased upwards. Before the winner is called better, it and the
baseline (the params' own values, the sweep's first trial) are trained again with
`sweep.confirm_seeds` seeds each (the first seed is the one the trials used, so those two
models are reused), every model scores the validation split, and the predictions of the
same seed are paired row by row. Pooled over the seeds, the accuracy difference gets the
gate's paired interval (`gate.noise`).

The winner ships when its mean validation score over the seeds is higher than the
baseline's; it is *called better* only when the interval's lower end is above zero. A
winner that loses the re-run gives way to the baseline, which then goes through the gate.

    runs = confirm_plan(params, best)                   # in the driver
    result = run_confirmation(params, plan, **run)      # on any worker
    verdict = judge(params, plan, results)              # in the driver
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from components.config import Params
from components.io import atomic_write_json
from components.sweep.space import current_values
from components.sweep.study import SweepPlan
from components.sweep.trial import worker_params

log = logging.getLogger("tuneline.sweep")
WHO = ("winner", "baseline")


def confirm_plan(params: Params, best: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The (who, seed, values) runs that confirm `best`; none when confirmation is off, when
    nothing won or when the winner is the baseline itself."""
    seeds = params.sweep.confirm_seeds
    baseline = current_values(params)
    if best is None or seeds < 2 or best["params"] == baseline:
        return []
    first = params.finetune.seed
    return [{"who": who, "seed": first + k, "values": values}
            for k in range(seeds)
            for who, values in zip(WHO, (best["params"], baseline), strict=True)]


def run_confirmation(params: Params, plan: SweepPlan, who: str, seed: int,
                     values: dict[str, Any]) -> dict[str, Any]:
    """Train `values` with `seed` (reused when that model exists), then predict the
    validation split; returns the record (also written under confirm/ in the sweep)."""
    from components import stages
    from components.model.modeling import load_trained
    from components.sweep.trial import nested_tags
    from components.task_types import task_type

    cpu0 = time.process_time()
    folder = plan.folder / "confirm" / f"{who}-seed{seed}"
    p = worker_params(params, plan, {**values, "finetune.seed": seed}, folder)
    tags = {**nested_tags(plan, -1), "sweep_trial": f"confirm-{who}-seed{seed}"}
    result = stages.finetune(p, tags=tags, run_name=f"confirm {who} seed {seed}")
    record: dict[str, Any] = {
        "who": who, "seed": seed, "values": values, "model": str(p.paths.model),
        "reused": result.reused, "steps": result.get("steps"),
        "score": float(result[f"val_{params.sweep.metric}"])}
    paired = task_type(params.task.type).split_predictions(
        load_trained(p.paths.model), p.paths.prepared, "validation", p)
    if paired is not None:
        record["gold"], record["pred"] = (v.tolist() for v in paired)
    record["cpu_seconds"] = round(time.process_time() - cpu0, 2)
    atomic_write_json(folder / "confirm.json", record)
    log.info("confirm %s seed %d: validation %s %.4f%s", who, seed, params.sweep.metric,
             record["score"], " (reused)" if record["reused"] else "")
    return record


def judge(params: Params, plan: SweepPlan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Winner against baseline over the seeds: mean scores, the pooled paired interval of
    the accuracy difference, and which of the two ships. Written to confirm/verdict.json."""
    from components.evaluate.stats import paired_accuracy

    by = {(r["who"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    scores = {who: [by[(who, s)]["score"] for s in seeds] for who in WHO}
    mean = {who: float(np.mean(v)) for who, v in scores.items()}
    verdict: dict[str, Any] = {
        "metric": params.sweep.metric, "seeds": seeds, "scores": scores, "mean": mean,
        "winner_values": by[("winner", seeds[0])]["values"],
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs), 1),
        "ships": "winner" if mean["winner"] > mean["baseline"] else "baseline"}
    if all("pred" in r for r in runs):
        gold = np.concatenate([by[("winner", s)]["gold"] for s in seeds])
        pred = {who: np.concatenate([by[(who, s)]["pred"] for s in seeds]) for who in WHO}
        verdict["accuracy_vs_baseline"] = paired_accuracy(gold, pred["winner"],
                                                          pred["baseline"], params.gate.noise)
        lower = verdict["accuracy_vs_baseline"]["ci"][0]
        verdict["winner_better"] = bool(verdict["ships"] == "winner" and lower > 0)
    else:  # no single class per row (token classification): the seeds' scores only
        verdict["winner_better"] = bool(min(scores["winner"]) > max(scores["baseline"]))
    verdict["text"] = describe(verdict)
    atomic_write_json(plan.folder / "confirm" / "verdict.json", verdict)
    log.info("sweep confirmation: %s", verdict["text"])
    return verdict


def describe(verdict: dict[str, Any]) -> str:
    """One line: the seeds' means, the interval, what ships."""
    m, n = verdict["mean"], len(verdict["seeds"])
    line = (f"over {n} seeds, validation {verdict['metric']} winner {m['winner']:.4f}, "
            f"baseline {m['baseline']:.4f}")
    cmp = verdict.get("accuracy_vs_baseline")
    if cmp:
        line += (f"; accuracy {cmp['delta'] * 100:+.1f} pt, {cmp['confidence']:.0%} paired "
                 f"interval {cmp['ci'][0] * 100:+.1f} to {cmp['ci'][1] * 100:+.1f} pt on "
                 f"{cmp['n']} predictions")
    if verdict["ships"] == "baseline":
        return line + ": the winner did not hold up; the baseline ships"
    return line + (": the winner is better and ships" if verdict["winner_better"] else
                   ": the winner ships, not shown better than the baseline")
