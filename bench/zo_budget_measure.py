"""One run of the budgeted zeroth-order benchmark, in its own process (bench/bench_zo_budget.py).

    python -m bench.zo_budget_measure probe --out DIR
        Fit the linear probe once (params.yaml head + backbone) and save the probed model
        as DIR/start, the common start of every run; scores it on validation and test.
    python -m bench.zo_budget_measure calibrate --start DIR --plan PLAN.json --out DIR
        CPU seconds per step of every configuration in PLAN (name -> overrides), all in
        this process, taking turns on the same batches.
    python -m bench.zo_budget_measure train --start DIR --out DIR --steps N --eval-every E
            --budget-cpu-s B [--set k=v ...]
        The real `finetune.train` from the start (no early stopping), a checkpoint at every
        evaluation; then every checkpoint is scored on the test split. CPU time counts the
        training steps only (`train/cpu_seconds`: process CPU over all threads); the run is
        cut when a step ends past 4 x B (a safety net when the calibration was far off).

The last stdout line is one JSON object (bench/common.py run_isolated reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import PROJECT_ROOT, peak_rss_mb
from components.config import Params, load_params

EVAL_BATCH = 64


class BudgetReached(Exception):
    """Raised from the metrics logger to end a run whose steps used up the CPU budget."""


def _params(overrides: list[str]) -> Params:
    return load_params(PROJECT_ROOT / "params.yaml", overrides)


def _prepared(params: Params) -> Path:
    prepared = PROJECT_ROOT / params.paths.prepared
    if not (prepared / "train.jsonl").exists():
        raise SystemExit(f"no demo data in {prepared}: run `tuneline prepare` first")
    return prepared


def predict(model: Any, tokenizer: Any, prepared: Path, split: str, max_length: int,
            ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class ids, gold ids) of `model` on one prepared split."""
    from components.data.files import load_split
    from components.evaluate.report import torch_logits

    texts, gold = load_split(prepared, split)
    model.eval()
    logits = torch_logits(model, tokenizer, texts, max_length, EVAL_BATCH)
    return logits.argmax(1), np.asarray(gold)


def probe(out: Path) -> dict[str, Any]:
    """Fit the head on frozen features (as `finetune.head_init: linear_probe` does) and save."""
    import torch

    from components.data.files import load_label_map
    from components.model.modeling import build_classifier
    from components.train.finetune.batching import sequential_batches
    from components.train.finetune.linear_probe import fit_linear_probe
    from components.train.finetune.loop import _encode_split

    params = _params([])
    torch.set_num_threads(params.model.num_threads)
    prepared = _prepared(params)
    model, tokenizer = build_classifier(params, load_label_map(prepared))
    data = _encode_split(tokenizer, prepared, "train", params)
    batches = list(sequential_batches(data, params.finetune.batch_size, by_length=True))
    cpu0 = time.process_time()
    fit = fit_linear_probe(model, batches, params.finetune.linear_probe)
    fit_cpu = time.process_time() - cpu0
    model.save_pretrained(out / "start")
    tokenizer.save_pretrained(out / "start")
    result: dict[str, Any] = {"probe": fit, "probe_cpu_seconds": fit_cpu,
                              "start": str(out / "start")}
    for split in ("validation", "test"):
        pred, gold = predict(model, tokenizer, prepared, split, params.model.max_length)
        result[f"{split}_accuracy"] = float((pred == gold).mean())
        result[f"{split}_pred"] = pred.tolist()
    return result


def _run_overrides(extra: list[str], steps: int, eval_every: int) -> list[str]:
    # The start already holds the probed head: keep it (`random` = no refit), never stop
    # early (the curve is the point), and checkpoint at every evaluation for test scoring.
    # One step past the last evaluation, so that evaluation is also a checkpoint.
    return ["finetune.head_init=random", "finetune.early_stopping.patience=0",
            f"finetune.max_steps={steps + 1}", f"finetune.eval_every={eval_every}",
            f"finetune.checkpoint_every={eval_every}",
            f"finetune.keep_checkpoints={steps // eval_every + 2}", *extra]


class Recorder:
    """Metrics logger: CPU seconds of the steps, training loss, validation metrics."""

    def __init__(self, limit_cpu_s: float) -> None:
        self.limit = limit_cpu_s
        self.cpu: dict[int, float] = {}
        self.loss: dict[int, float] = {}
        self.val: dict[int, dict[str, float]] = {}

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        if "train/cpu_seconds" in metrics:
            self.cpu[step] = metrics["train/cpu_seconds"]
            self.loss[step] = metrics["train/loss"]
            if self.cpu[step] > self.limit:
                raise BudgetReached
        if "val/accuracy" in metrics:
            self.val[step] = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}


def _train(start: Path, out: Path, overrides: list[str], limit_cpu_s: float,
           ) -> tuple[Params, Recorder, bool, float]:
    from components.train.finetune import train

    params = _params(overrides)
    rec = Recorder(limit_cpu_s)
    t0, cut = time.perf_counter(), False
    try:
        train(params, _prepared(params), out / "model", init_dir=start,
              checkpoint_dir=out / "checkpoints", logger=rec)
    except BudgetReached:
        cut = True
    return params, rec, cut, time.perf_counter() - t0


def calibrate(start: Path, plan: dict[str, list[str]], n_batches: int = 6,
              rounds: int = 3) -> dict[str, Any]:
    """CPU seconds of one step for every configuration of `plan` (name -> overrides).

    All configurations live in this one process and take turns on the same real training
    batches (length-sorted windows, as in training), so a change of machine load hits them
    alike. Per batch the fastest of `rounds` rounds counts (other processes on the cores
    only ever add time), then the mean over batches; a first round warms up.
    """
    import torch

    from components.data.files import load_label_map
    from components.model.modeling import build_classifier, trainable_parameters
    from components.train.finetune.base import build_strategy
    from components.train.finetune.batching import ShuffledLoader
    from components.train.finetune.loop import _encode_split, _one_step
    from components.train.finetune.validation import classification_loss

    runs = {}
    for name, extra in plan.items():
        params = _params(["finetune.head_init=random", *extra])
        prepared = _prepared(params)
        model, tokenizer = build_classifier(params, load_label_map(prepared), init_dir=start)
        strategy = build_strategy(params.finetune, trainable_parameters(model), 10**4)
        model.train(strategy.uses_grad)
        runs[name] = (model, strategy)
    torch.set_num_threads(params.model.num_threads)
    data = _encode_split(tokenizer, prepared, "train", params)
    loader = ShuffledLoader(data, params.finetune.batch_size, params.finetune.seed,
                            params.finetune.sort_window)
    batches = [loader.next_batch() for _ in range(n_batches)]
    cpu = {name: [float("inf")] * n_batches for name in runs}
    step = 0
    for r in range(rounds + 1):
        for b, batch in enumerate(batches):
            for name, (model, strategy) in runs.items():
                c0 = time.process_time()
                _one_step(model, strategy, batch, step, classification_loss)
                if r:  # round 0 warms up
                    cpu[name][b] = min(cpu[name][b], time.process_time() - c0)
            step += 1
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    return {"cpu_seconds_per_step": {n: statistics.fmean(v) for n, v in cpu.items()},
            "batches": n_batches, "rounds": rounds, "mean_tokens_per_batch": tokens,
            "threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}


def train_run(start: Path, out: Path, extra: list[str], steps: int, eval_every: int,
              budget_cpu_s: float, score_test: bool = True) -> dict[str, Any]:
    """The run, then (with `score_test`) every checkpoint scored on the test split."""
    overrides = _run_overrides(extra, steps, eval_every)
    params, rec, cut, wall = _train(start, out, overrides, 4.0 * budget_cpu_s)
    curve = [{"step": step, "cpu_seconds": rec.cpu[step], "train_loss": rec.loss[step],
              "val_accuracy": val["accuracy"], "val_loss": val["loss"]}
             for step, val in sorted(rec.val.items()) if step <= steps]
    if score_test:
        curve = _score_checkpoints(start, out, params, rec)
    increments = np.diff([rec.cpu[s] for s in sorted(rec.cpu)])
    return {"overrides": extra, "steps_planned": steps, "eval_every": eval_every,
            "steps_done": max(rec.cpu, default=0), "cut_by_budget": cut,
            "train_cpu_seconds": max(rec.cpu.values(), default=0.0),
            "cpu_seconds_per_step": float(np.median(increments)) if len(increments) else None,
            "wall_seconds": wall, "peak_rss_mb": peak_rss_mb(), "curve": curve}


def _score_checkpoints(start: Path, out: Path, params: Params, rec: Recorder,
                       ) -> list[dict[str, Any]]:
    """Validation metrics (from the log) and test predictions of every checkpoint."""
    import torch

    from components.data.files import load_label_map
    from components.model.modeling import build_classifier
    from components.train.finetune import checkpoint as ckpt

    prepared = _prepared(params)
    model, tokenizer = build_classifier(params, load_label_map(prepared), init_dir=start)
    named = dict(model.named_parameters())
    curve = []
    for path in ckpt.list_checkpoints(out / "checkpoints"):
        step = int(path.name.split("-")[1])
        weights, _, _ = ckpt.load_checkpoint(path)
        with torch.no_grad():
            for name, value in weights.items():
                named[name].copy_(value)
        pred, gold = predict(model, tokenizer, prepared, "test", params.model.max_length)
        curve.append({"step": step, "cpu_seconds": rec.cpu[step],
                      "train_loss": rec.loss[step],
                      "val_accuracy": rec.val[step]["accuracy"],
                      "val_loss": rec.val[step]["loss"],
                      "test_accuracy": float((pred == gold).mean()),
                      "test_pred": pred.tolist()})
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["probe", "calibrate", "train"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--start", type=Path)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--budget-cpu-s", type=float, default=0.0)
    parser.add_argument("--plan", type=Path)
    parser.add_argument("--no-test", action="store_true", help="validation curve only")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.what == "probe":
        result = probe(args.out)
    elif args.what == "calibrate":
        result = calibrate(args.start, json.loads(args.plan.read_text()))
    else:
        result = train_run(args.start, args.out, args.overrides, args.steps, args.eval_every,
                           args.budget_cpu_s, score_test=not args.no_test)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
