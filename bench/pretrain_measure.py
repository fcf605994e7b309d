"""One pretraining measurement per process; prints one JSON line (see bench_pretrain.py).

    python -m bench.pretrain_measure data --root DIR
        ingest + prepare the demo corpus into DIR, with data/demo/unlabeled.txt as the
        unlabeled text (the pretrain stage drops its validation and test texts)
    python -m bench.pretrain_measure variant --root DIR [--set k=v ...] [--seeds 42,1]
        the pretrain stage (adaptation + the guard's probes; the adapted backbone is kept
        whatever the guard says, to measure it), then for each seed an adamw fine-tune on
        the params.yaml defaults from that backbone, scored on the test split
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import PROJECT_ROOT, peak_rss_mb  # noqa: E402
from components.config import Params, load_params  # noqa: E402

UNLABELED = "data/demo/unlabeled.txt"


def bench_params(root: Path, overrides: list[str]) -> Params:
    """params.yaml + overrides, every output under `root` (the project's folders untouched)."""
    paths = [f"paths.{name}={root / name}" for name in
             ("input", "prepared", "pretrained", "model", "checkpoints", "metrics")]
    return load_params(PROJECT_ROOT / "params.yaml",
                       [*paths, f"paths.unlabeled={PROJECT_ROOT / UNLABELED}", *overrides])


def make_data(root: Path) -> dict[str, Any]:
    from components import stages

    params = bench_params(root, [])
    ingested = stages.ingest(params)
    prepared = stages.prepare(params)
    return {"ingest": ingested.result, "prepare": prepared.result.get("splits")}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_variant(root: Path, overrides: list[str], seeds: list[int]) -> dict[str, Any]:
    """The pretrain stage under `overrides`, then one fine-tune per seed from its backbone."""
    from transformers import logging as hf_logging

    from components import stages
    from components.pretrain import judge
    from components.stages.pretrain import starting_backbone

    hf_logging.set_verbosity_error()
    params = bench_params(root, [*overrides, "pretrain.keep_if_better=false"])
    out: dict[str, Any] = {"overrides": overrides}
    if params.pretrain.enabled:
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        res = stages.pretrain(params, force=True).result
        out["pretrain"] = {**res, "stage_cpu_seconds": round(cpu_seconds() - cpu0, 1),
                           "stage_wall_seconds": round(time.perf_counter() - wall0, 1),
                           "adaptation_seconds": round(res.get("head_warmup_seconds", 0.0)
                                                       + res["train_seconds"], 1)}
        keep, reason = judge(res["probe_before"], res["probe_after"], True)
        out["guard_would_keep"], out["guard_reason"] = keep, reason
    init = starting_backbone(params)
    out["finetune"] = {str(seed): finetune_and_score(params, init, seed, root)
                       for seed in seeds}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def finetune_and_score(params: Params, init: Path | None, seed: int,
                       root: Path) -> dict[str, Any]:
    """adamw fine-tune (params.yaml defaults, finetune.seed=`seed`) and test predictions."""
    import numpy as np

    from components.data_io import load_split
    from components.evaluate import accuracy, macro_f1, torch_logits
    from components.finetune import train
    from components.modeling import load_trained

    tuned = params.model_copy(deep=True)
    tuned.finetune.seed = seed
    t0 = time.perf_counter()
    metrics = train(tuned, tuned.paths.prepared, root / "model", init_dir=init,
                    checkpoint_dir=root / "checkpoints")
    wall = time.perf_counter() - t0
    trained = load_trained(root / "model")
    texts, ids = load_split(tuned.paths.prepared, "test")
    pred = torch_logits(trained.model, trained.tokenizer, texts, tuned.model.max_length,
                        tuned.evaluate.batch_size).argmax(1)
    gold = np.asarray(ids)
    return {"test_accuracy": accuracy(gold, pred),
            "test_macro_f1": macro_f1(gold, pred, len(trained.labels)),
            "val_accuracy": metrics.get("val_accuracy"), "best_step": metrics.get("best_step"),
            "steps": metrics.get("steps"), "wall_seconds": round(wall, 1),
            "test_pred": [int(v) for v in pred]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["data", "variant"])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", default="", help="fine-tune seeds, comma-separated")
    args = parser.parse_args()
    if args.what == "data":
        result = make_data(args.root)
    else:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        result = run_variant(args.root, args.overrides, seeds)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
