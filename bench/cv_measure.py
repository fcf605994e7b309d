"""One fold of one setting of the cross-validated benchmark, in a process of its own.

    python -m bench.cv_measure --prepared DIR --out DIR [--set k=v ...]

Fine-tunes on DIR's train split (early stopping on its validation split), scores DIR's
test split with the saved torch model and prints one JSON line: the test predictions,
their gold labels, the chosen length and steps, and the training time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import PROJECT_ROOT  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    import torch
    from transformers import logging as hf_logging

    from components.config import load_params
    from components.data.files import load_split
    from components.evaluate.report import torch_logits
    from components.model.modeling import load_trained
    from components.train.finetune import train

    hf_logging.set_verbosity_error()
    params = load_params(PROJECT_ROOT / "params.yaml", [
        *args.sets, f"paths.checkpoints={args.out / 'checkpoints'}"])
    torch.set_num_threads(params.model.num_threads)
    t0, cpu0 = time.perf_counter(), time.process_time()
    metrics = train(params, args.prepared, args.out / "model")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    trained = load_trained(args.out / "model")
    texts, gold = load_split(args.prepared, "test")
    logits = torch_logits(trained.model, trained.tokenizer, texts,
                          int(trained.meta["max_length"]), params.evaluate.batch_size)
    print(json.dumps({
        "pred": logits.argmax(1).tolist(), "gold": list(gold),
        "max_length": metrics.get("max_length"), "truncated_share": metrics.get("truncated_share"),
        "max_steps": metrics.get("max_steps"), "steps": metrics["steps"],
        "best_step": metrics["best_step"], "val_accuracy": metrics.get("val_accuracy"),
        "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu, 1)}))


if __name__ == "__main__":
    main()
