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

from bench.common import PROJECT_ROOT, RESULTS_DIR, run_isolated, write_result

MODULE = "bench.train_measure"
PARTS = ("steps", "accuracy", "mlm")


def bench_steps(repeats: int) -> dict:
    return {mode: run_isolated(MODULE, "step", "--mode", mode, "--repeats", str(repeats))
            for mode in ("forward", "adamw", "lora")}


def bench_accuracy(overrides: list[str]) -> dict:
    sets = [a for o in overrides for a in ("--set", o)]
    with tempfile.TemporaryDirectory() as tmp:
        finetuned = run_isolated(MODULE, "finetune", "--out", tmp, *sets)
    baseline = run_isolated(MODULE, "tfidf")
    command = " ".join(["flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_train",
                        "--parts accuracy", *sets])
    model_pred = finetuned.pop("test_pred")
    return {"adamw_full": finetuned, "tfidf_logreg": baseline,
            "margin": finetuned["test_accuracy"] - baseline["test_accuracy"],
            "paired_vs_tfidf": paired_difference(model_pred, baseline.pop("test_pred")),
            "paired_vs_tfidf_first_tokens": paired_difference(
                model_pred, baseline["first_tokens_only"].pop("test_pred")),
            "params": "params.yaml defaults" if not overrides else "params.yaml + overrides",
            "command": command}


def paired_difference(model_pred: list[int], baseline_pred: list[int]) -> dict:
    """Test accuracy of the model minus the baseline's, with the gate's noise measures: a
    paired bootstrap interval and McNemar's p (params.yaml gate.noise)."""
    import numpy as np

    from components.config import load_params
    from components.data import load_split
    from components.gate import bootstrap_delta_ci, mcnemar_pvalue

    params = load_params()
    _, gold = load_split(PROJECT_ROOT / params.paths.prepared, "test")
    y, a, b = np.asarray(gold), np.asarray(model_pred), np.asarray(baseline_pred)
    noise = params.gate.noise
    lo, hi = bootstrap_delta_ci(y, a, b, "accuracy", int(y.max()) + 1, noise)
    return {"delta": float((a == y).mean() - (b == y).mean()),
            "ci": [lo, hi], "confidence": noise.confidence,
            "mcnemar_p": mcnemar_pvalue(a == y, b == y),
            "model_only_right": int(np.sum((a == y) & (b != y))),
            "baseline_only_right": int(np.sum((a != y) & (b == y)))}


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
