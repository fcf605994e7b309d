"""Cross-validated accuracy of training settings: every text of a corpus scored once, paired.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_cv \\
        [--corpus demo|long] [--folds 5] [--seeds 42] [--settings defaults,fixed64]

The corpus is cut into `--folds` stratified folds; for each fold a model is trained on the
rest (10% of it held out for validation / early stopping) and scores the fold, so every
text is scored exactly once per setting and seed, by a model that never saw it. Settings
are compared on the same texts: the difference in accuracy with the gate's paired
bootstrap interval and McNemar's p (`components.evaluate.stats.paired_accuracy`), per seed
and pooled over seeds.

Corpora: `demo` (the stdlib docstrings of `tuneline run`), `long` (three docstrings of
the same module and family joined: texts about 3x longer, a third as many).
Settings: `defaults` (params.yaml: `auto` length and steps, noise-aware early stopping),
`fixed64` (the earlier defaults: 64 tokens, 500 steps, plain early stopping), or any
`name=key=value;key=value` given on the command line.
Each fold run happens in its own process (bench/cv_measure.py); its result (the fold's
test predictions, the chosen length and steps, the training time) is kept in
bench/results/cv_runs/<corpus>/folds<k>/, so an interrupted benchmark resumes, on another
machine too. Results: bench/results/cv_<corpus>.json.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BENCH_DIR, PROJECT_ROOT, run_isolated, write_result

SETTINGS: dict[str, list[str]] = {
    "defaults": [],
    "fixed64": ["model.max_length=64", "finetune.max_steps=500", "finetune.eval_every=50",
                "finetune.checkpoint_every=50", "finetune.early_stopping.noise_z=0",
                "finetune.early_stopping.min_fraction=0"],
}
CACHE = BENCH_DIR / ".cache" / "cv"
# One file per setting, seed and fold (its test predictions): kept with the results, so a
# benchmark that takes hours resumes on another machine and every figure can be re-derived.
RUNS = BENCH_DIR / "results" / "cv_runs"


def corpus_rows(name: str) -> list[dict[str, str]]:
    """The labeled rows of corpus `name` (built from the installed stdlib, deterministic)."""
    from components.config import load_params
    from components.data.demo import build_demo_corpus

    folder = CACHE / "corpus"
    if not (folder / "labeled.jsonl").exists():
        build_demo_corpus(folder, load_params(PROJECT_ROOT / "params.yaml").demo)
    rows = [json.loads(line) for line in (folder / "labeled.jsonl").open()]
    if name == "demo":
        return [{"text": r["text"], "label": r["label"]} for r in rows]
    if name != "long":
        raise SystemExit(f"unknown corpus {name!r}: demo | long")
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["source"])].append(r["text"])
    return [{"text": " ".join(texts[i: i + 3]), "label": label}
            for (label, _), texts in sorted(groups.items())
            for i in range(0, len(texts) - 2, 3)]


def fold_of(rows: list[dict[str, str]], folds: int, seed: int = 0) -> list[int]:
    """A stratified fold number for every row (each label spread evenly over the folds)."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_label[r["label"]].append(i)
    out = [0] * len(rows)
    rng = random.Random(seed)
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        for k, i in enumerate(idx):
            out[i] = k % folds
    return out


def write_fold(rows: list[dict[str, str]], folds: list[int], k: int, out: Path) -> Path:
    """A prepared folder: test = fold k, validation = every 10th other row, train = the rest."""
    from components.data.files import write_jsonl

    if (out / "labels.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rest = [i for i in range(len(rows)) if folds[i] != k]
    split = {"test": [rows[i] for i in range(len(rows)) if folds[i] == k],
             "validation": [rows[i] for j, i in enumerate(rest) if j % 10 == 0],
             "train": [rows[i] for j, i in enumerate(rest) if j % 10 != 0]}
    for name, part in split.items():
        write_jsonl(out / f"{name}.jsonl", part)
    labels = sorted({r["label"] for r in rows})
    (out / "labels.json").write_text(json.dumps({"labels": labels}))
    return out


def run(corpus: str, setting: str, sets: list[str], seed: int, k: int, folds: int,
        prepared: Path, need_model: bool = False) -> dict[str, Any]:
    """One fold's result: kept, or trained now (also when `need_model` and the kept
    result's model is not on this machine)."""
    cached = RUNS / corpus / f"folds{folds}" / f"{setting}-seed{seed}-fold{k}.json"
    work = model_dir(corpus, setting, seed, k).parent
    if cached.exists() and not (need_model and not (work / "model").exists()):
        return json.loads(cached.read_text())
    result = run_isolated("bench.cv_measure", "--prepared", str(prepared), "--out", str(work),
                          *[a for s in [*sets, f"finetune.seed={seed}"] for a in ("--set", s)],
                          timeout=4 * 3600)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


def model_dir(corpus: str, setting: str, seed: int, k: int) -> Path:
    """Where the fold's model is saved (on this machine only)."""
    return CACHE / corpus / "work" / f"{setting}-seed{seed}-fold{k}" / "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="demo")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--settings", default="defaults,fixed64",
                    help="names from SETTINGS, or name=key=value;key=value")
    args = ap.parse_args()
    from components.config import load_params
    from components.evaluate.stats import paired_accuracy

    settings: dict[str, list[str]] = {}
    for item in args.settings.split(","):
        name, _, spec = item.partition("=")
        settings[name] = spec.split(";") if spec else SETTINGS[name]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = corpus_rows(args.corpus)
    folds = fold_of(rows, args.folds)
    (CACHE / args.corpus).mkdir(parents=True, exist_ok=True)
    preds: dict[tuple[str, int], np.ndarray] = {}
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    gold = np.array([0] * len(rows))
    labels = sorted({r["label"] for r in rows})
    for k in range(args.folds):
        prepared = write_fold(rows, folds, k, CACHE / args.corpus / f"folds{args.folds}" / str(k))
        test_rows = [i for i in range(len(rows)) if folds[i] == k]
        for name, sets in settings.items():
            for seed in seeds:
                r = run(args.corpus, name, sets, seed, k, args.folds, prepared)
                pred = preds.setdefault((name, seed), np.full(len(rows), -1))
                pred[test_rows] = r["pred"]
                gold[test_rows] = r["gold"]
                runs[name].append({key: r[key] for key in r if key not in ("pred", "gold")}
                                  | {"fold": k, "seed": seed})
    noise = load_params(PROJECT_ROOT / "params.yaml").gate.noise
    names = list(settings)
    base = names[-1]
    out: dict[str, Any] = {"corpus": args.corpus, "rows": len(rows), "labels": labels,
                           "folds": args.folds, "seeds": seeds, "baseline": base,
                           "settings": {n: settings[n] for n in names}, "results": {}}
    for name in names:
        acc = [float(np.mean(preds[(name, s)] == gold)) for s in seeds]
        entry: dict[str, Any] = {
            "accuracy_per_seed": acc, "accuracy": float(np.mean(acc)),
            "mean_max_length": float(np.mean([r["max_length"] for r in runs[name]])),
            "mean_truncated_share": float(np.mean([r["truncated_share"] for r in runs[name]])),
            "mean_steps": float(np.mean([r["steps"] for r in runs[name]])),
            "mean_train_cpu_seconds": float(np.mean([r["train_cpu_seconds"]
                                                     for r in runs[name]])),
            "runs": runs[name]}
        if name != base:
            entry["vs_" + base] = {str(s): paired_accuracy(gold, preds[(name, s)],
                                                           preds[(base, s)], noise)
                                   for s in seeds}
            pooled_gold = np.concatenate([gold] * len(seeds))
            entry["vs_" + base]["pooled"] = paired_accuracy(
                pooled_gold, np.concatenate([preds[(name, s)] for s in seeds]),
                np.concatenate([preds[(base, s)] for s in seeds]), noise)
        out["results"][name] = entry
    write_result(f"cv_{args.corpus}", {**out, "command": (
        f"flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_cv --corpus "
        f"{args.corpus} --folds {args.folds} --seeds {args.seeds} --settings {args.settings}")})


if __name__ == "__main__":
    main()
