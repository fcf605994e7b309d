"""One pretraining measurement per process; prints one JSON line (see bench_pretrain.py).

    python -m bench.pretrain_measure data --root DIR
        ingest + prepare the demo corpus into DIR, with data/demo/unlabeled.txt as the
        unlabeled text (the pretrain stage drops its validation and test texts)
    python -m bench.pretrain_measure variant --root DIR --pretrained DIR [--set k=v ...]
                                             [--seeds 42,1]
        the pretrain stage (adaptation + the guard's probes; the adapted backbone is kept
        whatever the guard says, to measure it) into --pretrained, where the stage's own
        fingerprint makes a rerun with the same settings reuse it; then for each seed an
        adamw fine-tune on the params.yaml defaults from that backbone, scored on test
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
    return {"ingest": ingested.summary, "prepare": prepared.summary}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_variant(root: Path, pretrained: Path, overrides: list[str], seeds: list[int],
                fresh: bool = False) -> dict[str, Any]:
    """The pretrain stage under `overrides`, then one fine-tune per seed from its backbone."""
    from transformers import logging as hf_logging

    from components.stages.pretrain import starting_backbone
    from components.train.pretrain import judge

    hf_logging.set_verbosity_error()
    params = bench_params(root, [*overrides, "pretrain.keep_if_better=false",
                                 f"paths.pretrained={pretrained}"])
    out: dict[str, Any] = {"overrides": overrides}
    if params.pretrain.enabled:
        out["pretrain"] = adapt(params, fresh)
        keep, reason = judge(out["pretrain"]["probe_before"], out["pretrain"]["probe_after"],
                             True)
        out["guard_would_keep"], out["guard_reason"] = keep, reason
    init = starting_backbone(params)
    out["finetune"] = {str(seed): finetune_and_score(params, init, seed, root)
                       for seed in seeds}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def adapt(params: Params, fresh: bool) -> dict[str, Any]:
    """The pretrain stage's result: run it, or (unless `fresh`) read the one already in
    `paths.pretrained`. Reuse is keyed on the settings alone (the folder is per setting),
    not on the code, so `search` and `compare` share one adaptation."""
    from components import stages
    from components.io import read_json
    from components.stages.spec import FINGERPRINT_FILE

    record = params.paths.pretrained / FINGERPRINT_FILE
    if record.exists() and not fresh:
        res, timing = read_json(record)["result"], {"reused": True}
    else:
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        res = stages.pretrain(params, force=True).result
        timing = {"reused": False, "stage_cpu_seconds": round(cpu_seconds() - cpu0, 1),
                  "stage_wall_seconds": round(time.perf_counter() - wall0, 1)}
    seconds = res.get("head_warmup_seconds", 0.0) + res["train_seconds"]
    return {**res, **timing, "adaptation_seconds": round(seconds, 1)}


def finetune_and_score(params: Params, init: Path | None, seed: int,
                       root: Path) -> dict[str, Any]:
    """adamw fine-tune (params.yaml defaults, finetune.seed=`seed`) and test predictions."""
    import numpy as np

    from components.data.files import load_split
    from components.evaluate.report import accuracy, macro_f1, torch_logits
    from components.model.modeling import load_trained
    from components.train.finetune import train

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
    parser.add_argument("--pretrained", type=Path, help="the pretrain stage's output folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", default="", help="fine-tune seeds, comma-separated")
    parser.add_argument("--fresh", action="store_true", help="adapt even if already done")
    args = parser.parse_args()
    if args.what == "data":
        result = make_data(args.root)
    else:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        result = run_variant(args.root, args.pretrained, args.overrides, seeds, args.fresh)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
