"""Smaller to serve: the fine-tuned MiniLM-L6 teacher vs distilled students with 3 and 2 of
its layers, on the demo corpus, through the real stages (ingest, prepare, finetune,
compress, export) with params.yaml defaults and only the output folders moved.

Students are distilled on the train split plus the demo's unlabeled docstrings (those
that are not validation or test texts: their text must stay unseen). For each int8
bundle: test accuracy with the gate's paired bootstrap interval against the teacher, and,
alternating the models round by round so all see the same machine load, batch-32
throughput and batch-1 latency of the serving classifier (tokenize + ONNX Runtime, the
code the server runs per batch). Goal: a student at >= 1.8x the teacher's throughput
within 1 pt of its accuracy.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_compress [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import PROJECT_ROOT, write_result

STUDENTS = {"L3": [0, 2, 4], "L2": [0, 3]}
GOAL_SPEEDUP, GOAL_DROP_PT = 1.8, 1.0


def _params(work: Path, name: str, extra: list[str]):
    from components.config import load_params

    own = {"compressed": f"compressed-{name}", "export": f"export-{name}",
           "eval": f"eval-{name}", "gate": f"gate-{name}", "metrics": f"metrics-{name}"}
    shared = ("input", "prepared", "pretrained", "model", "checkpoints")
    sets = [f"paths.{k}={work / k}" for k in shared]
    sets += [f"paths.{k}={work / v}" for k, v in own.items()]
    sets += [f"paths.unlabeled={work / 'unlabeled.txt'}", f"registry.artifact_root={work}/mla",
             f"registry.tracking_uri=sqlite:///{work}/mlflow.db"]
    return load_params(PROJECT_ROOT / "params.yaml", sets + extra)


def build(work: Path) -> dict[str, dict]:
    """Teacher and students through the stage functions (reused when already current)."""
    from components import stages
    from components.data.files import load_split

    base = _params(work, "teacher", [])
    stages.ingest(base.model_copy(update={"paths": base.paths.model_copy(
        update={"unlabeled": None})}))
    stages.prepare(base)
    seen = set(load_split(base.paths.prepared, "validation")[0]) | set(
        load_split(base.paths.prepared, "test")[0])
    docs = (PROJECT_ROOT / base.paths.corpus / "unlabeled.txt").read_text().splitlines()
    (work / "unlabeled.txt").write_text("\n".join(d for d in docs if d not in seen) + "\n")
    stages.ingest(base)
    models = {}
    for name, keep in {"teacher": None, **STUDENTS}.items():
        extra = [] if keep is None else ["compress.enabled=true",
                                         f"compress.keep_layers={keep}"]
        params = _params(work, name, extra)
        t0 = time.perf_counter()
        trained = stages.finetune(params)
        compressed = stages.compress(params)
        exported = stages.export(params)
        models[name] = {"bundle": Path(params.paths.export), "layers": keep or list(range(6)),
                        "train": (compressed if keep else trained).result,
                        "stage_seconds": round(time.perf_counter() - t0, 1),
                        "parity": {k: v for k, v in exported.result.items()
                                   if not isinstance(v, dict)}}
    return models


def measure(models: dict[str, dict], texts: list[str], rounds: int) -> dict[str, dict]:
    from components.config import load_params
    from components.release.predictor import INT8_MODEL, OnnxClassifier

    threads = load_params(PROJECT_ROOT / "params.yaml").serve.threads
    clfs = {n: OnnxClassifier(m["bundle"], INT8_MODEL, threads=threads) for n, m in
            models.items()}
    speed: dict[str, dict[str, list[float]]] = {n: {"b32": [], "b1": []} for n in clfs}
    for _ in range(rounds):
        for name, clf in clfs.items():
            clf.logits(texts[:32], 32)   # warm
            t0 = time.perf_counter()
            clf.logits(texts, 32)
            speed[name]["b32"].append(len(texts) / (time.perf_counter() - t0))
            for text in texts[:60]:
                t0 = time.perf_counter()
                clf.logits([text], 1)
                speed[name]["b1"].append((time.perf_counter() - t0) * 1e3)
    return {n: {"texts_per_s_b32": statistics.median(s["b32"]),
                "b1_p50_ms": statistics.median(s["b1"]),
                "logits": clfs[n].logits(texts, 32)} for n, s in speed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=PROJECT_ROOT / "artifacts/bench-compress")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from components.data.files import load_split
    from components.evaluate.stats import paired_accuracy

    args.work.mkdir(parents=True, exist_ok=True)
    models = build(args.work)
    prepared = _params(args.work, "teacher", []).paths.prepared
    texts, gold = load_split(prepared, "test")
    y = np.asarray(gold)
    measured = measure(models, texts, args.rounds)
    noise = _params(args.work, "teacher", []).gate.noise
    teacher_pred = measured["teacher"]["logits"].argmax(1)
    teacher_speed = measured["teacher"]["texts_per_s_b32"]
    rows = {}
    for name, model in models.items():
        pred = measured[name]["logits"].argmax(1)
        lo, hi = paired_accuracy(y, pred, teacher_pred, noise)["ci"]
        accuracy = float(np.mean(pred == y))
        rows[name] = {
            "layers": model["layers"], "test_accuracy_int8": accuracy,
            "vs_teacher_pt": 100 * (accuracy - float(np.mean(teacher_pred == y))),
            "vs_teacher_ci_pt": [100 * lo, 100 * hi],
            "texts_per_s_b32": measured[name]["texts_per_s_b32"],
            "speedup_vs_teacher": measured[name]["texts_per_s_b32"] / teacher_speed,
            "b1_p50_ms": measured[name]["b1_p50_ms"],
            "size_mb_int8": model["parity"]["size_mb_int8"],
            "val_accuracy": model["train"].get("val_accuracy"),
            "train_steps": model["train"].get("steps"),
            "stage_seconds": model["stage_seconds"]}
    met = {n: r["speedup_vs_teacher"] >= GOAL_SPEEDUP and r["vs_teacher_pt"] >= -GOAL_DROP_PT
           for n, r in rows.items() if n != "teacher"}
    write_result("compress", {
        "command": "flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_compress "
                   + " ".join(sys.argv[1:]),
        "test_rows": len(texts), "rounds": args.rounds, "models": rows,
        "goal": {"min_speedup": GOAL_SPEEDUP, "max_accuracy_drop_pt": GOAL_DROP_PT},
        "goal_met": any(met.values()), "goal_met_by": [n for n, ok in met.items() if ok]})


if __name__ == "__main__":
    main()
