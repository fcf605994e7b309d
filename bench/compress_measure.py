"""One fold of one model of the cross-validated compression benchmark, in its own process.

    python -m bench.compress_measure --prepared DIR --teacher DIR --out DIR \\
        [--unlabeled FILE] [--keep 0,2,4] [--set k=v ...]

With `--keep`, distils a student with those teacher layers (train split + the unlabeled
file, augmented as the compress stage does); without it, takes the teacher as is. Exports
the model to an int8 bundle (the export stage's code), scores DIR's test split with the
int8 ONNX model and prints one JSON line: the predictions, gold labels, the int8 size and
the distillation's figures.
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
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--unlabeled", type=Path)
    ap.add_argument("--keep", default="")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    import torch
    from transformers import logging as hf_logging

    from components.config import load_params
    from components.data.files import load_split
    from components.release.bundle import export_bundle
    from components.release.predictor import INT8_MODEL, OnnxClassifier
    from components.train.distill import distill

    hf_logging.set_verbosity_error()
    sets = list(args.sets)
    if args.keep:
        sets += ["compress.enabled=true", f"compress.keep_layers=[{args.keep}]"]
    # Accuracy is scored below on the whole test split; export's own parity check and latency
    # need only a sample here.
    params = load_params(PROJECT_ROOT / "params.yaml",
                         ["export.parity_max_rows=256", "export.latency_repeats=3", *sets])
    torch.set_num_threads(params.model.num_threads)
    result: dict = {}
    model_dir = args.teacher
    if args.keep:
        unlabeled = (args.unlabeled.read_text().splitlines() if args.unlabeled else [])
        t0, cpu0 = time.perf_counter(), time.process_time()
        metrics = distill(params, args.teacher, args.prepared, args.out / "student",
                          unlabeled, checkpoint_dir=args.out / "checkpoints")
        result = {"steps": metrics["steps"], "best_step": metrics["best_step"],
                  "val_accuracy": metrics.get("val_accuracy"),
                  "teacher_val_accuracy": metrics.get("teacher_val_accuracy"),
                  "distilled_rows": (metrics["distilled_rows"]
                                     + metrics["distilled_unlabeled_rows"]
                                     + metrics["distilled_augmented_rows"]),
                  "distill_seconds": round(time.perf_counter() - t0, 1),
                  "distill_cpu_seconds": round(time.process_time() - cpu0, 1)}
        model_dir = args.out / "student"
    parity = export_bundle(model_dir, args.prepared, args.out / "bundle", params)
    texts, gold = load_split(args.prepared, "test")
    clf = OnnxClassifier(args.out / "bundle", INT8_MODEL, threads=params.serve.threads)
    logits = clf.logits(texts, params.evaluate.batch_size)
    print(json.dumps({"pred": logits.argmax(1).tolist(), "gold": list(gold),
                      "size_mb_int8": parity["size_mb_int8"],
                      "int8_agreement": parity["int8_agreement"], **result}))


if __name__ == "__main__":
    main()
