"""Training engine on MiniLM-L6, this CPU, 2 threads; every measurement in its own process.

- steps: forward ms, AdamW full-fine-tune step ms, LoRA step ms (batch 16 x seq 64), with
  the peak RSS of each process.
- accuracy: `adamw` full fine-tuning with params.yaml exactly as `tuneline run` uses it
  (only the output folders are temporary) vs TF-IDF + logistic regression on the demo
  corpus's test split; goal: fine-tuning wins.
- mlm: masked-LM pretraining on the demo corpus's unlabeled text; goal: held-out MLM loss
  goes down.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_train [--parts steps,accuracy,mlm]

Writes bench/results/train.json (parts not rerun are kept from the previous file).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np

from bench.common import PROJECT_ROOT, RESULTS_DIR, run_isolated, write_result

MODULE = "bench.train_measure"
PARTS = ("steps", "accuracy", "mlm")


def bench_steps(repeats: int) -> dict:
    return {mode: run_isolated(MODULE, "step", "--mode", mode, "--repeats", str(repeats))
            for mode in ("forward", "adamw", "lora")}


def bench_accuracy(overrides: list[str]) -> dict:
    from components.config import load_params
    from components.data.files import load_split
    from components.evaluate.stats import paired_accuracy

    sets = [a for o in overrides for a in ("--set", o)]
    with tempfile.TemporaryDirectory() as tmp:
        finetuned = run_isolated(MODULE, "finetune", "--out", tmp, *sets)
    baseline = run_isolated(MODULE, "tfidf")
    command = " ".join(["flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_train",
                        "--parts accuracy", *sets])
    params = load_params()
    prepared = PROJECT_ROOT / params.paths.prepared
    gold = np.asarray(load_split(prepared, "test")[1])
    model_pred = np.asarray(finetuned.pop("test_pred"))

    def versus(baseline_pred: list[int]) -> dict:
        return paired_accuracy(gold, model_pred, np.asarray(baseline_pred), params.gate.noise)

    return {"adamw_full": finetuned, "tfidf_logreg": baseline,
            "margin": finetuned["test_accuracy"] - baseline["test_accuracy"],
            "paired_vs_tfidf": versus(baseline.pop("test_pred")),
            "paired_vs_tfidf_first_tokens": versus(baseline["first_tokens_only"].pop("test_pred")),
            "params": "params.yaml defaults" if not overrides else "params.yaml + overrides",
            "command": command}


def bench_mlm() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return run_isolated(MODULE, "mlm", "--out", tmp)


def goals(result: dict) -> dict:
    out = {}
    if "accuracy" in result:
        # Only a run on the defaults can meet the goal: a tuned override proves nothing.
        out["adamw_full_beats_tfidf"] = (result["accuracy"]["margin"] > 0
                                         and not result["accuracy"]["adamw_full"]["overrides"])
    if "mlm" in result:
        out["mlm_heldout_loss_lowered"] = (result["mlm"]["heldout_loss_after"]
                                           < result["mlm"]["heldout_loss_before"])
    if "steps" in result:
        out["all_step_timings_present"] = all(
            result["steps"][m]["median_ms"] > 0 for m in ("forward", "adamw", "lora"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="Comma-separated subset of: " + ", ".join(PARTS))
    parser.add_argument("--repeats", type=int, default=15, help="Timed steps per mode.")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="params override for the accuracy fine-tune (repeatable; for "
                             "exploring only: the goal counts a run on the defaults)")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts: {sorted(unknown)}")
    previous = RESULTS_DIR / "train.json"
    result = {}
    if previous.exists():
        old = json.loads(previous.read_text())
        result = {k: old[k] for k in PARTS if k in old and k not in parts}
    if "steps" in parts:
        result["steps"] = bench_steps(args.repeats)
    if "accuracy" in parts:
        result["accuracy"] = bench_accuracy(args.overrides)
    if "mlm" in parts:
        result["mlm"] = bench_mlm()
    write_result("train", {"model": "all-MiniLM-L6-v2", **result, "goals": goals(result)})


if __name__ == "__main__":
    main()
