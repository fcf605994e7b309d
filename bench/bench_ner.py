"""Token classification on the demo corpus: fine-tuned MiniLM against two simple baselines.

    flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_ner [--max-steps N]

The demo corpus (stdlib docstrings, entities from their authors' markup, see README
"Token classification") is prepared with params.yaml's `data` settings, so the test split
is the one `tuneline run --set task.type=token_classification` scores. Compared on it,
entity-level (exact span + type) micro F1, per-type F1 and word accuracy:
  - dictionary: each training word's most frequent tag (case-sensitive), "O" for unseen
    words, stray I- tags read as B- (conlleval);
  - logistic regression per word: the word, its lowercase form, shape, prefix/suffix and
    the neighbouring words, one-vs-rest over BIO tags (scikit-learn);
  - MiniLM (packaged all-MiniLM-L6-v2) fine-tuned by the real `finetune.train` with
    params.yaml's settings and task.type=token_classification, scored by the real
    evaluation (windowed word tagging, torch fp32).
Results: bench/results/ner.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.common import write_result


def prepare(tmp: Path, params) -> Path:
    from components.data.demo import build_demo_corpus
    from components.task_types.token_data import prepare_token_dataset

    build_demo_corpus(tmp / "corpus", params.demo)
    prepare_token_dataset(tmp / "corpus" / "labeled.jsonl", tmp / "prepared", params.data)
    return tmp / "prepared"


def dictionary_tagger(train_words, train_tags):
    seen: dict[str, Counter] = defaultdict(Counter)
    for words, tags in zip(train_words, train_tags, strict=True):
        for w, t in zip(words, tags, strict=True):
            seen[w][t] += 1
    table = {w: c.most_common(1)[0][0] for w, c in seen.items()}
    return lambda words: [table.get(w, "O") for w in words]


def _features(words: list[str], i: int) -> dict[str, float]:
    w = words[i]
    shape = "".join("X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else c
                    for c in w[:6])
    out = {f"w={w}": 1.0, f"lw={w.lower()}": 1.0, f"shape={shape}": 1.0,
           f"pre={w[:3]}": 1.0, f"suf={w[-3:]}": 1.0, f"len={min(len(w), 10)}": 1.0}
    for k in (-2, -1, 1, 2):
        j = i + k
        out[f"w{k:+d}={words[j].lower() if 0 <= j < len(words) else '<pad>'}"] = 1.0
    return out


def logistic_tagger(train_words, train_tags):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    x = [_features(ws, i) for ws in train_words for i in range(len(ws))]
    y = [t for ts in train_tags for t in ts]
    vec = DictVectorizer()
    clf = LogisticRegression(max_iter=300, C=1.0)
    clf.fit(vec.fit_transform(x), y)

    def tag(words):
        return list(clf.predict(vec.transform([_features(words, i)
                                               for i in range(len(words))])))

    return tag


def score_baseline(make, train, test, types) -> dict:
    from components.task_types.tagging import entity_report

    t0 = time.perf_counter()
    tagger = make(*train)
    fit_s = time.perf_counter() - t0
    pred = [tagger(ws) for ws in test[0]]
    report = entity_report(test[1], pred, types)
    return {**_summary(report), "fit_seconds": round(fit_s, 1)}


def _summary(report: dict) -> dict:
    keep = ("entity_f1", "entity_precision", "entity_recall", "macro_f1", "accuracy", "n",
            "tokens")
    return {**{k: report[k] for k in keep},
            "per_type_f1": {t: round(s["f1"], 4) for t, s in report["per_type"].items()},
            "support": {t: s["support"] for t, s in report["per_type"].items()}}


def fine_tune(tmp: Path, prepared: Path, params) -> dict:
    from components.model.modeling import load_trained
    from components.task_types.token_eval import evaluate_token_model
    from components.train.finetune import train

    t0 = time.perf_counter()
    metrics = train(params, prepared, tmp / "model", checkpoint_dir=tmp / "ckpt")
    train_s = time.perf_counter() - t0
    evaluate_token_model(load_trained(tmp / "model"), prepared, tmp / "eval", params)
    import json

    report = json.loads((tmp / "eval" / "report.json").read_text())
    return {**_summary(report), "train_seconds": round(train_s, 1),
            "steps": metrics["steps"], "best_step": metrics["best_step"],
            "val_accuracy": metrics.get("val_accuracy")}


def main() -> None:
    from components.config import load_params
    from components.data.files import load_label_map
    from components.task_types.token_data import load_token_split
    from components.task_types.token_eval import types_of

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-steps", type=int, default=None,
                    help="finetune.max_steps (default: params.yaml)")
    args = ap.parse_args()
    sets = ["task.type=token_classification"]
    if args.max_steps:
        sets.append(f"finetune.max_steps={args.max_steps}")
    params = load_params(overrides=sets)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ner-") as tmp:
        tmp = Path(tmp)
        prepared = prepare(tmp, params)
        labels = load_label_map(prepared)
        types = types_of(labels)

        def split(name):
            words, ids = load_token_split(prepared, name)
            return words, [[labels[i] for i in s] for s in ids]

        train, test = split("train"), split("test")
        results = {"dictionary": score_baseline(dictionary_tagger, train, test, types),
                   "logistic_regression": score_baseline(logistic_tagger, train, test, types),
                   "minilm_finetuned": fine_tune(tmp, prepared, params)}
    write_result("ner", {
        "command": "flock /tmp/tuneline-cpu.lock .venv/bin/python -m bench.bench_ner"
                   + (f" --max-steps {args.max_steps}" if args.max_steps else ""),
        "split": "test", "sentences": {"train": len(train[0]), "test": len(test[0])},
        "finetune": {"strategy": params.finetune.strategy, "peft": params.peft.method,
                     "max_steps": params.finetune.max_steps,
                     "max_length": params.model.max_length, "stride": params.task.stride},
        "results": results, "wall_seconds": round(time.perf_counter() - started, 1)})
    for name, r in results.items():
        print(f"{name:>20}: entity F1 {r['entity_f1']:.4f}  per type {r['per_type_f1']}")


if __name__ == "__main__":
    main()
