"""ONNX fp32 vs int8 for all-MiniLM-L6-v2 fine-tuned on the demo corpus.

Fine-tunes with the project's training loop and params.yaml (skipped when the work folder
already holds a model trained with the same params hash), exports with `export_bundle`,
and reads parity on the whole test split (accuracy fp32 / int8, argmax agreement, max
logit difference). Latency is end to end as served (tokenize + ONNX Runtime run,
`model.num_threads` threads), each (graph, batch size) measured in its own process.
Goals: int8 accuracy drop <= 0.5 pt, agreement >= 99%, int8 size <= 0.3x fp32.

Beside the shipped dynamic int8 graph, the int8 variants of `bench/int8_variants.py`
(ONNX Runtime static QDQ; OpenVINO fp32 and NNCF int8 when installed) are built from the
same fp32 graph, judged by the gate's int8 rules on the test split and timed the same way
(batch 1 and 32, each variant in its own process, rounds alternating between variants).

    .venv/bin/python -m bench.bench_export [--work artifacts/bench-export]
        [--repeats-b1 200] [--repeats-b32 30] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import PROJECT_ROOT, run_isolated, summarize_ms, time_ms, write_result

GOALS = {"max_accuracy_drop_pt": 0.5, "min_agreement": 0.99, "max_size_ratio": 0.3}


def _params(overrides: list[str]):
    from components.config import load_params

    return load_params(overrides=overrides)


def train_key(params) -> str:
    """Hash of the params sections that decide the trained weights (not serving etc.)."""
    from components.config import params_hash

    dump = params.model_dump(mode="json")
    return params_hash({k: dump[k] for k in ("data", "model", "peft", "pretrain", "finetune")})


def train_model(work: Path, overrides: list[str]) -> dict:
    """Fine-tune into work/model unless a model trained with the same settings is there."""
    from components.train.finetune import train

    params = _params(overrides)
    cached = work / "train.json"
    if (work / "model" / "tuneline_model.json").exists() and cached.exists() and \
            json.loads(cached.read_text()).get("train_key") == train_key(params):
        return {**json.loads(cached.read_text()), "reused": True}
    result = train(params, params.paths.prepared, work / "model",
                   checkpoint_dir=work / "checkpoints")
    keep = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
    keep["train_key"] = train_key(params)
    cached.write_text(json.dumps(keep))
    return {**keep, "reused": False}


def export(work: Path, overrides: list[str]) -> dict:
    from components.release.bundle import export_bundle

    params = _params(overrides)
    return export_bundle(work / "model", params.paths.prepared, work / "bundle", params)


def measure(bundle: Path, model_file: str, batch: int, repeats: int,
            overrides: list[str]) -> dict:
    """Served-path latency of one graph at one batch size (run in its own process)."""
    from components.data.files import load_split
    from components.release.predictor import OnnxClassifier

    params = _params(overrides)
    texts, _ = load_split(params.paths.prepared, "test")
    clf = OnnxClassifier(bundle, model_file, threads=params.model.num_threads)
    return _latency(clf.logits, texts, batch, repeats)


def _latency(logits: Callable[[list[str], int], Any], texts: list[str], batch: int,
             repeats: int) -> dict:
    """Median / p95 ms of `logits(batch texts, batch)` on batches cycled from `texts`."""
    batches = [[texts[(i * batch + j) % len(texts)] for j in range(batch)]
               for i in range(repeats + 2)]
    it = iter(batches)
    stats = summarize_ms(time_ms(lambda: logits(next(it), batch), repeats, warmup=2))
    return {**stats, "texts_per_s": batch * 1e3 / stats["median_ms"]}


def build_variants(work: Path, overrides: list[str]) -> dict:
    from bench.int8_variants import build
    from components.data.files import load_split

    params = _params(overrides)
    train_texts, _ = load_split(params.paths.prepared, "train")
    return build(work / "bundle", work / "variants", train_texts)


def measure_variant(work: Path, name: str, batch: int, repeats: int,
                    overrides: list[str]) -> dict:
    """One variant's gate verdict against ORT fp32 (batch 0) or its latency at `batch`."""
    from bench.int8_variants import Runner, parity
    from components.data.files import load_split

    params = _params(overrides)
    texts, y_true = load_split(params.paths.prepared, "test")
    threads = params.model.num_threads
    runner = Runner(work / "bundle", work / "variants", name, threads)
    if batch == 0:
        reference = Runner(work / "bundle", work / "variants", "ort_fp32", threads)
        bs = params.evaluate.batch_size
        return {**parity(reference.logits(texts, bs), runner.logits(texts, bs), y_true,
                         params.gate), "size_mb": runner.size_mb()}
    return _latency(runner.logits, texts, batch, repeats)


def compare_variants(work: Path, overrides: list[str], repeats_b1: int, repeats_b32: int,
                     rounds: int = 3) -> dict:
    """Build, judge and time every variant; latency medians over alternating rounds."""
    from bench.int8_variants import variant_names

    names = ["ort_fp32", *variant_names()]
    built = _isolated("variants", work, overrides)
    out: dict = {"build_s": built, "variants": {}}
    for name in names[1:]:
        out["variants"][name] = _isolated("variant", work, overrides, "--file", name,
                                          "--batch", "0", "--repeats", "0")
    samples: dict = {(n, b): [] for n in names for b in (1, 32)}
    for _ in range(rounds):
        for name in names:
            for batch, repeats in ((1, repeats_b1 // rounds), (32, repeats_b32 // rounds)):
                samples[name, batch].append(_isolated(
                    "variant", work, overrides, "--file", name, "--batch", str(batch),
                    "--repeats", str(repeats))["median_ms"])
    for name in names:
        row = out["variants"].setdefault(name, {})
        for batch in (1, 32):
            median = float(np.median(samples[name, batch]))
            row[f"b{batch}_median_ms"] = median
            row[f"b{batch}_texts_per_s"] = batch * 1e3 / median
    base = out["variants"]["ort_dynamic"]
    for row in out["variants"].values():
        row["b32_speed_vs_ort_dynamic"] = base["b32_median_ms"] / row["b32_median_ms"]
        row["b1_speed_vs_ort_dynamic"] = base["b1_median_ms"] / row["b1_median_ms"]
    return out


def _isolated(step: str, work: Path, overrides: list[str], *extra: str) -> dict:
    sets = [a for o in overrides for a in ("--set", o)]
    return run_isolated("bench.bench_export", "--step", step, "--work", str(work), *extra,
                        *sets)


def run_all(work: Path, overrides: list[str], repeats_b1: int, repeats_b32: int) -> None:
    from components.release.predictor import FP32_MODEL, INT8_MODEL

    train_info = _isolated("train", work, overrides)
    parity = _isolated("export", work, overrides)
    latency = {}
    for name, file in (("fp32", FP32_MODEL), ("int8", INT8_MODEL)):
        for batch, repeats in ((1, repeats_b1), (32, repeats_b32)):
            latency[f"{name}_b{batch}"] = _isolated(
                "measure", work, overrides, "--file", file, "--batch", str(batch),
                "--repeats", str(repeats))
    from components.release.gate import int8_rules

    variants = compare_variants(work, overrides, repeats_b1, repeats_b32)
    drop_pt = 100 * parity["int8_accuracy_drop"]
    params = _params(overrides)
    int8_verdict = int8_rules(parity, params.gate)
    confident = sum(p >= params.gate.int8_confident_probability
                    for p in parity["per_row"]["fp32_probability"])
    write_result("export", {
        "command": "python -m bench.bench_export " + " ".join(sys.argv[1:]),
        "model": f"{params.model.name_or_path} fine-tuned on the demo corpus "
                 f"({params.finetune.strategy}, {train_info.get('steps')} steps)",
        "train": train_info, "test_rows": parity["rows"],
        "accuracy_torch": parity["accuracy_torch"], "accuracy_fp32": parity["accuracy_fp32"],
        "accuracy_int8": parity["accuracy_int8"], "accuracy_drop_pt": drop_pt,
        "agreement": parity["int8_agreement"],
        "int8_disagreements": parity["int8_disagreements"],
        "parity_batch_size": params.evaluate.batch_size,
        "agreement_b1": parity["int8_agreement_b1"],
        "accuracy_int8_b1": parity["accuracy_int8_b1"],
        "int8_flip_max_fp32_probability": parity["int8_flip_max_fp32_probability"],
        "confident_rows": confident,
        "agreement_on_confident_rows": 1 - int8_verdict[0]["value"] / max(confident, 1),
        "int8_confident_flips": int8_verdict[0]["value"],
        "int8_near_tie_flips": int8_verdict[0]["near_tie_flips"],
        "confident_probability": params.gate.int8_confident_probability,
        "int8_accuracy_change_ci": [int8_verdict[1]["ci_low"], int8_verdict[1]["ci_high"]],
        "gate_int8_rules_passed": all(r["passed"] for r in int8_verdict),
        "quantization": {"method": "dynamic", "weight_type": "QInt8",
                         "per_channel": params.export.per_channel},
        "max_logit_diff_torch_vs_fp32":
            parity["max_logit_diff"], "max_logit_diff_int8_vs_fp32":
            parity["int8_max_logit_diff"],
        "size_mb": {"fp32": parity["size_mb_fp32"], "int8": parity["size_mb_int8"]},
        "size_ratio": parity["size_ratio"], "latency": latency,
        "int8_speedup_b1": latency["fp32_b1"]["median_ms"] / latency["int8_b1"]["median_ms"],
        "int8_speedup_b32": latency["fp32_b32"]["median_ms"] / latency["int8_b32"]["median_ms"],
        "int8_variants": variants,
        "goals": GOALS,
        "goals_met": {"accuracy_drop": drop_pt <= GOALS["max_accuracy_drop_pt"],
                      "agreement": parity["int8_agreement"] >= GOALS["min_agreement"],
                      "size_ratio": parity["size_ratio"] <= GOALS["max_size_ratio"]},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=PROJECT_ROOT / "artifacts/bench-export")
    parser.add_argument("--repeats-b1", type=int, default=200)
    parser.add_argument("--repeats-b32", type=int, default=30)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--step", choices=["train", "export", "measure", "variants", "variant"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.step is None:
        run_all(work, args.overrides, args.repeats_b1, args.repeats_b32)
        return
    if args.step == "train":
        out = train_model(work, args.overrides)
    elif args.step == "export":
        out = export(work, args.overrides)
    elif args.step == "variants":
        out = build_variants(work, args.overrides)
    elif args.step == "variant":
        out = measure_variant(work, args.file, args.batch, args.repeats, args.overrides)
    else:
        out = measure(work / "bundle", args.file, args.batch, args.repeats, args.overrides)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
