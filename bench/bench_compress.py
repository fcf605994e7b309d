"""Smaller to serve: the fine-tuned MiniLM-L6 teacher against distilled students that keep
3 and 2 of its layers, cross-validated on the demo corpus (every text scored once, paired).

    .venv/bin/python -m bench.bench_compress [--folds 3] [--rounds 5] \\
        [--students L3=0,2,4 L2=0,3 'L3x2=0,2,4;compress.max_steps=1200']

The corpus is cut into the stratified folds of `bench.bench_cv` (the same prepared folders
and the same teachers: the `fixed64` setting, 64 tokens and 500 steps, so the benchmark
fits in well under an hour of CPU). For each fold the teacher's int8 bundle and each
student's (distilled by the compress stage's code: its layers kept, logit + label +
hidden-state terms, the train split plus the unlabeled docstrings that are not that fold's
validation or test texts, augmented; params.yaml `compress.*` unless the student names its
own settings) score the fold's test texts with the int8 ONNX model the server runs. Each
student's accuracy is compared with the teacher's on all texts: the difference with the
gate's paired bootstrap interval and McNemar's p. Throughput: batch-32 texts/s and batch-1
latency of the serving classifier, the models alternated round by round in this process
(fold 0's bundles). Goal: a 3-layer student within 1 pt of the teacher (interval's lower
end above -1.5 pt) at >= 1.8x its texts/s.
Each fold/model runs in its own process (bench/compress_measure.py), cached under
bench/.cache/compress/, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_cv import CACHE as CV_CACHE
from bench.bench_cv import SETTINGS, corpus_rows, fold_of, model_dir, write_fold
from bench.bench_cv import run as cv_run
from bench.common import BENCH_DIR, PROJECT_ROOT, run_isolated, write_result

CACHE = BENCH_DIR / ".cache" / "compress"
TEACHER_SETTING = "fixed64"
DEFAULT_STUDENTS = ["L3=0,2,4", "L2=0,3"]
GOAL_SPEEDUP, GOAL_DROP_PT, GOAL_LOWER_PT = 1.8, 1.0, -1.5


def unlabeled_for(fold_dir: Path, out: Path) -> Path:
    """The corpus' unlabeled docstrings minus the fold's validation and test texts."""
    from components.data.files import load_texts

    seen = set(load_texts(fold_dir, "validation")) | set(load_texts(fold_dir, "test"))
    docs = (CV_CACHE / "corpus" / "unlabeled.txt").read_text().splitlines()
    out.write_text("\n".join(d for d in docs if d and d not in seen) + "\n")
    return out


def measure_model(name: str, spec: str, k: int, prepared: Path, teacher: Path,
                  unlabeled: Path) -> dict[str, Any]:
    cached = CACHE / f"{name}-fold{k}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    keep, *sets = spec.split(";") if spec else [""]
    work = CACHE / "work" / f"{name}-fold{k}"
    args = ["--prepared", str(prepared), "--teacher", str(teacher), "--out", str(work)]
    if keep:
        args += ["--keep", keep, "--unlabeled", str(unlabeled)]
    for s in sets:
        args += ["--set", s]
    result = run_isolated("bench.compress_measure", *args, timeout=4 * 3600)
    result["bundle"] = str(work / "bundle")
    cached.write_text(json.dumps(result))
    return result


def speed(bundles: dict[str, Path], texts: list[str], rounds: int) -> dict[str, dict]:
    from components.config import load_params
    from components.release.predictor import INT8_MODEL, OnnxClassifier

    threads = load_params(PROJECT_ROOT / "params.yaml").serve.threads
    clfs = {n: OnnxClassifier(b, INT8_MODEL, threads=threads) for n, b in bundles.items()}
    got: dict[str, dict[str, list[float]]] = {n: {"b32": [], "b1": []} for n in clfs}
    for _ in range(rounds):
        for name, clf in clfs.items():
            clf.logits(texts[:32], 32)   # warm
            t0 = time.perf_counter()
            clf.logits(texts, 32)
            got[name]["b32"].append(len(texts) / (time.perf_counter() - t0))
            for text in texts[:60]:
                t0 = time.perf_counter()
                clf.logits([text], 1)
                got[name]["b1"].append((time.perf_counter() - t0) * 1e3)
    return {n: {"texts_per_s_b32": statistics.median(s["b32"]),
                "b1_p50_ms": statistics.median(s["b1"])} for n, s in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--students", nargs="+", default=DEFAULT_STUDENTS,
                    help="name=layers[;key=value...], e.g. 'L3=0,2,4;compress.max_steps=1200'")
    args = ap.parse_args()
    from components.config import load_params
    from components.data.files import load_texts
    from components.evaluate.stats import paired_accuracy

    students = dict(s.split("=", 1) for s in args.students)
    models = {"teacher": "", **students}
    rows = corpus_rows("demo")
    folds = fold_of(rows, args.folds)
    (CV_CACHE / "demo").mkdir(parents=True, exist_ok=True)
    (CACHE / "work").mkdir(parents=True, exist_ok=True)
    gold = np.full(len(rows), -1)
    preds = {n: np.full(len(rows), -1) for n in models}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in models}
    bundles: dict[str, Path] = {}
    for k in range(args.folds):
        prepared = write_fold(rows, folds, k, CV_CACHE / "demo" / f"folds{args.folds}" / str(k))
        cv_run("demo", TEACHER_SETTING, SETTINGS[TEACHER_SETTING], 42, k, args.folds, prepared,
               need_model=True)
        teacher = model_dir("demo", TEACHER_SETTING, 42, k)
        unlabeled = unlabeled_for(prepared, CACHE / f"unlabeled-fold{k}.txt")
        test_rows = [i for i in range(len(rows)) if folds[i] == k]
        for name, spec in models.items():
            r = measure_model(name, spec, k, prepared, teacher, unlabeled)
            preds[name][test_rows] = r["pred"]
            gold[test_rows] = r["gold"]
            runs[name].append({key: v for key, v in r.items() if key not in ("pred", "gold")}
                              | {"fold": k})
            if k == 0:
                bundles[name] = Path(r["bundle"])
    texts = load_texts(CV_CACHE / "demo" / f"folds{args.folds}" / "0", "test")
    speeds = speed(bundles, texts, args.rounds)
    noise = load_params(PROJECT_ROOT / "params.yaml").gate.noise
    teacher_acc = float(np.mean(preds["teacher"] == gold))
    out: dict[str, Any] = {}
    for name in models:
        acc = float(np.mean(preds[name] == gold))
        entry: dict[str, Any] = {
            "layers": students.get(name, "0,1,2,3,4,5").split(";")[0],
            "settings": students.get(name, "").split(";")[1:],
            "accuracy_int8": acc, **speeds[name],
            "speedup_vs_teacher": speeds[name]["texts_per_s_b32"]
            / speeds["teacher"]["texts_per_s_b32"],
            "size_mb_int8": float(np.mean([r["size_mb_int8"] for r in runs[name]])),
            "runs": runs[name]}
        if name != "teacher":
            paired = paired_accuracy(gold, preds[name], preds["teacher"], noise)
            entry["vs_teacher_pt"] = 100 * (acc - teacher_acc)
            entry["vs_teacher_ci_pt"] = [100 * paired["ci"][0], 100 * paired["ci"][1]]
            entry["vs_teacher"] = paired
            entry["goal_met"] = bool(entry["speedup_vs_teacher"] >= GOAL_SPEEDUP
                                     and entry["vs_teacher_pt"] >= -GOAL_DROP_PT
                                     and entry["vs_teacher_ci_pt"][0] > GOAL_LOWER_PT)
        out[name] = entry
    met = [n for n, e in out.items() if e.get("goal_met")]
    write_result("compress", {
        "command": ".venv/bin/python -m bench.bench_compress --folds "
                   f"{args.folds} --rounds {args.rounds} --students {' '.join(args.students)}",
        "corpus": "demo", "rows": len(rows), "folds": args.folds,
        "teacher_setting": {TEACHER_SETTING: SETTINGS[TEACHER_SETTING]},
        "speed_texts": len(texts), "rounds": args.rounds, "models": out,
        "goal": {"min_speedup": GOAL_SPEEDUP, "max_accuracy_drop_pt": GOAL_DROP_PT,
                 "min_interval_lower_pt": GOAL_LOWER_PT},
        "goal_met": bool(met), "goal_met_by": met})


if __name__ == "__main__":
    main()
