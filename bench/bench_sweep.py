"""Sweep benchmark: the sweep's winner against the params.yaml defaults on the demo test split.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_sweep [--cpu-budget 6000]
        [--trials 30] [--set k=v ...]

Runs `tuneline sweep` exactly as a user would (the sweep flow: a local Dask cluster of
`sweep.workers` x `sweep.threads_per_worker`, the params.yaml search space, TPE + median
pruning) on the demo corpus, with every output under bench/.cache/sweep/ so the project's
own model registry is untouched and an interrupted benchmark resumes its study. No trial
starts once the study's trials have used `--cpu-budget` CPU-seconds. The first trial is
the params.yaml defaults, so both models come from the same search, trained the same way.

Then both are scored on the test split, which the search never saw (it ranks trials on the
validation split), and compared the way the gate compares a challenger with the champion:
the paired bootstrap interval of the accuracy difference (params.yaml `gate.noise`) and
McNemar's exact test. Writes bench/results/sweep.json and bench/results/sweep.png (the
sweep's plot: validation score against trial and against CPU-seconds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import PROJECT_ROOT, RESULTS_DIR, write_result

WORK = PROJECT_ROOT / "bench" / ".cache" / "sweep"
BIN = Path(sys.executable).parent


def bench_sets(cpu_budget: float, trials: int, extra: list[str]) -> list[str]:
    """Outputs under WORK; the input stays the project's demo corpus."""
    sets = [f"paths.{name}={WORK / name}" for name in (
        "input", "prepared", "pretrained", "model", "compressed", "checkpoints", "eval",
        "export", "gate", "metrics", "sweep")]
    return sets + [f"registry.tracking_uri=sqlite:///{WORK / 'mlflow.db'}",
                   f"registry.artifact_root={WORK / 'mlartifacts'}",
                   f"sweep.budget.cpu_seconds={cpu_budget}", f"sweep.n_trials={trials}",
                   *extra]


def run_sweep(sets: list[str]) -> tuple[dict[str, Any], float, str]:
    out = WORK / "sweep-summary.json"
    cmd = [str(BIN / "tuneline"), "sweep", *[a for s in sets for a in ("--set", s)],
           "--json", "-o", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    (WORK / "sweep.log").write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"tuneline sweep failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text()), wall, " ".join(cmd[1:])


def test_predictions(model_dir: Path, params: Any) -> np.ndarray:
    from components.data.files import load_split
    from components.evaluate.report import torch_logits
    from components.model.modeling import load_trained

    trained = load_trained(model_dir)
    texts, _ = load_split(params.paths.prepared, "test")
    return torch_logits(trained.model, trained.tokenizer, texts, trained.meta["max_length"],
                        params.evaluate.batch_size).argmax(1)


def compare(params: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Winner vs defaults on the test split (fp32 torch models, the same rows)."""
    import torch

    from components.data.files import load_label_map, load_split
    from components.evaluate.report import accuracy, macro_f1
    from components.evaluate.stats import paired_accuracy
    from components.model.modeling import META_FILE
    from components.release.gate import compare_to_champion
    from components.stages.spec import fingerprint
    from components.sweep import with_values
    from components.sweep.space import current_values

    torch.set_num_threads(params.model.num_threads)
    folder = Path(summary["sweep"]["folder"]).parent
    defaults_fp = fingerprint("finetune", with_values(params, current_values(params)))
    models = {"defaults": folder / "models" / defaults_fp, "winner": Path(params.paths.model)}
    gold = np.asarray(load_split(params.paths.prepared, "test")[1])
    n_labels = len(load_label_map(params.paths.prepared))
    pred, out = {}, {}
    for name, path in models.items():
        pred[name] = test_predictions(path, params)
        meta = json.loads((path / META_FILE).read_text())
        out[name] = {"test_accuracy": accuracy(gold, pred[name]),
                     "test_macro_f1": macro_f1(gold, pred[name], n_labels),
                     "val_accuracy": meta["metrics"].get("val_accuracy"),
                     "steps": meta["metrics"]["steps"], "best_step": meta["metrics"]["best_step"],
                     "train_seconds_1_thread": meta["metrics"]["train_seconds"],
                     "finetune_fingerprint": path.name if name == "defaults" else None}
    out["winner_is_defaults"] = (fingerprint("finetune", with_values(
        params, summary["sweep"]["best"]["params"])) == defaults_fp)
    out["paired_winner_minus_defaults"] = paired_accuracy(
        gold, pred["winner"], pred["defaults"], params.gate.noise)
    # The gate's own champion rules, with the defaults' model in the champion's place.
    out["gate_rules_vs_defaults"] = compare_to_champion(gold, pred["winner"], pred["defaults"],
                                                        n_labels, params.gate)
    out["n_test"] = int(len(gold))
    return out


def decide(cmp: dict[str, Any]) -> dict[str, Any]:
    """Do the winner's settings hold on the test split?"""
    paired = cmp["paired_winner_minus_defaults"]
    gate_ok = all(rule["passed"] for rule in cmp["gate_rules_vs_defaults"])
    holds = not cmp["winner_is_defaults"] and paired["delta"] > 0 and gate_ok
    return {"rule": "params.yaml takes the winner's values when the winner is not the defaults, "
                    "its test accuracy is above the defaults' (the test split never entered "
                    "the search) and it passes the gate's champion rules with the defaults' "
                    "model as the champion",
            "winner_passes_gate_vs_defaults": gate_ok, "winner_holds_on_test": holds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-budget", type=float, default=6000.0,
                        help="CPU-seconds the study's trials may use (no trial starts after)")
    parser.add_argument("--trials", type=int, default=30, help="sweep.n_trials (a cap)")
    parser.add_argument("--fresh", action="store_true", help="start over (drop the cache)")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="more params overrides for the sweep")
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)

    from components.config import load_params

    sets = bench_sets(args.cpu_budget, args.trials, args.extra)
    summary, wall, command = run_sweep(sets)
    params = load_params(PROJECT_ROOT / "params.yaml", sets)
    cmp = compare(params, summary)
    found = summary["sweep"]
    shutil.copyfile(Path(found["folder"]) / "sweep.png", RESULTS_DIR / "sweep.png")
    write_result("sweep", {
        "command": ("flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_sweep "
                    + " ".join(sys.argv[1:])).strip(),
        "sweep_command": command,
        "budget": {"cpu_seconds": args.cpu_budget, "n_trials_cap": args.trials,
                   "workers": params.sweep.workers,
                   "threads_per_worker": params.sweep.threads_per_worker,
                   "trials_cpu_seconds_used": found["cpu_seconds"],
                   "wall_seconds_sweep_command": round(wall, 1)},
        "space": {k: v.model_dump(exclude_defaults=True) for k, v in params.sweep.space.items()},
        "study": found["study"], "stopped": found["stopped"], "counts": found["counts"],
        "best_trial": found["best"]["number"], "best_overrides": found["best_overrides"],
        "trials": found["trials"],
        "winner_chain": {k: summary.get(k) for k in ("status", "version", "test", "gate_passed",
                                                      "reused", "stage_seconds")},
        "comparison": cmp, "decision": decide(cmp)})


if __name__ == "__main__":
    main()
