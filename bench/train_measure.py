"""One training-engine measurement per process; prints one JSON line (see bench_train.py).

    python -m bench.train_measure step --mode forward|adamw|lora [--repeats 15]
    python -m bench.train_measure finetune --out DIR [--set k=v]  (adamw full fine-tune, demo data)
    python -m bench.train_measure tfidf                   (TF-IDF + logistic regression)
    python -m bench.train_measure mlm --out DIR           (MLM pretraining held-out loss)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import PROJECT_ROOT, peak_rss_mb, summarize_ms, time_ms  # noqa: E402
from components.config import Params, load_params  # noqa: E402

BATCH, SEQ = 16, 64


def _params(overrides: list[str]) -> Params:
    return load_params(PROJECT_ROOT / "params.yaml", overrides)


def _prepared(params: Params) -> Path:
    prepared = PROJECT_ROOT / params.paths.prepared
    if not (prepared / "train.jsonl").exists():
        raise SystemExit(f"no demo data in {prepared}: run `tuneline prepare` first")
    return prepared


def measure_step(mode: str, repeats: int) -> dict[str, Any]:
    """Median ms of a forward pass or one strategy step on MiniLM-L6, batch 16 x seq 64."""
    import torch
    from transformers import logging as hf_logging

    from components.data.files import load_label_map, load_split
    from components.model.modeling import build_classifier, trainable_parameters
    from components.train.finetune.base import build_strategy
    from components.train.finetune.validation import classification_loss

    hf_logging.set_verbosity_error()
    params = _params(["peft.method=lora"] if mode == "lora" else [])
    torch.set_num_threads(params.model.num_threads)
    prepared = _prepared(params)
    labels = load_label_map(prepared)
    model, tokenizer = build_classifier(params, labels)
    texts, ids = load_split(prepared, "train")
    # Padded to exactly 64 tokens so every step costs the same.
    enc = tokenizer(texts[:BATCH], padding="max_length", truncation=True, max_length=SEQ,
                    return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "labels": torch.tensor(ids[:BATCH])}
    if mode == "forward":
        model.eval()

        def fn() -> None:
            with torch.inference_mode():
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    else:
        strategy = build_strategy(params.finetune, trainable_parameters(model), 10_000)
        counter = iter(range(10_000))

        def fn() -> None:
            strategy.step(model, batch, classification_loss, next(counter))
    samples = time_ms(fn, repeats=repeats, warmup=2)
    n_train = sum(p.numel() for _, p in trainable_parameters(model))
    return {"mode": mode, **summarize_ms(samples), "peak_rss_mb": round(peak_rss_mb(), 1),
            "batch": BATCH, "seq": SEQ, "threads": torch.get_num_threads(),
            "trainable_params": n_train}


def measure_finetune(out: Path, overrides: list[str]) -> dict[str, Any]:
    """adamw full fine-tune of MiniLM-L6 (params.yaml + overrides), scored on the test split."""
    import torch
    from transformers import logging as hf_logging

    from components.data.files import load_split
    from components.evaluate.report import accuracy, macro_f1, torch_logits
    from components.model.modeling import load_trained
    from components.train.finetune import train

    hf_logging.set_verbosity_error()
    params = _params(["finetune.strategy=adamw", "peft.method=none", *overrides])
    prepared = _prepared(params)
    t0 = time.perf_counter()
    metrics = train(params, prepared, out / "model", checkpoint_dir=out / "checkpoints")
    wall = time.perf_counter() - t0  # the whole stage: load, steps, evaluations, checkpoints
    trained = load_trained(out / "model")
    texts, ids = load_split(prepared, "test")
    lengths = [len(x) for x in trained.tokenizer(texts)["input_ids"]]
    pred = torch_logits(trained.model, trained.tokenizer, texts, params.model.max_length,
                        params.evaluate.batch_size).argmax(1)
    gold = np.asarray(ids)
    ft = params.finetune
    settings = {"model": params.model.model_dump(mode="json"), "batch_size": ft.batch_size,
                "max_steps": ft.max_steps, "sort_window": ft.sort_window,
                "head_init": ft.head_init, "freeze_embeddings": ft.freeze_embeddings,
                "eval_every": ft.eval_every,
                "adamw": ft.adamw.model_dump(mode="json")}
    return {"test_accuracy": accuracy(gold, pred),
            "test_macro_f1": macro_f1(gold, pred, len(trained.labels)),
            "train": metrics, "train_wall_seconds": round(wall, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(),
            "n_test": len(ids), "overrides": overrides, "settings": settings,
            "test_texts_truncated": sum(n > params.model.max_length for n in lengths) / len(ids),
            "test_pred": pred.tolist()}


def measure_tfidf() -> dict[str, Any]:
    """TF-IDF (word 1-2 grams) + logistic regression, C chosen on the validation split; on
    the whole text, and on only the first `model.max_length` tokens (what the model sees)."""
    from transformers import AutoTokenizer

    from components.data.files import load_split
    from components.model.modeling import resolve_backbone

    params = _params([])
    prepared = _prepared(params)
    splits = [load_split(prepared, s) for s in ("train", "validation", "test")]
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(params.model.name_or_path))

    def first_tokens(texts: list[str]) -> list[str]:
        ids = tokenizer(texts, truncation=True, max_length=params.model.max_length)["input_ids"]
        return tokenizer.batch_decode(ids, skip_special_tokens=True)

    whole = _tfidf_logreg(splits)
    seen = _tfidf_logreg([(first_tokens(x), y) for x, y in splits])
    return {**whole, "input": "whole text (no token limit)",
            "first_tokens_only": {**seen, "input": f"first {params.model.max_length} "
                                                   "tokens of the model's tokenizer, decoded"}}


def _tfidf_logreg(splits: list[tuple[list[str], list[int]]]) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    (xtr, ytr), (xva, yva), (xte, yte) = splits
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    ftr, fva, fte = vec.fit_transform(xtr), vec.transform(xva), vec.transform(xte)
    best = None
    for c in (0.1, 1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(ftr, ytr)
        val = float((clf.predict(fva) == yva).mean())
        if best is None or val > best[0]:
            best = (val, c, clf)
    val_acc, c, clf = best
    pred = clf.predict(fte)
    return {"test_accuracy": float((pred == yte).mean()), "val_accuracy": val_acc, "C": c,
            "n_test": len(yte), "test_pred": [int(v) for v in pred]}


def measure_mlm(out: Path) -> dict[str, Any]:
    """MLM pretraining of MiniLM-L6 on the demo corpus's unlabeled text (params.yaml)."""
    from transformers import logging as hf_logging

    from components.data.files import load_unlabeled
    from components.train.pretrain import adapt_backbone

    hf_logging.set_verbosity_error()
    params = _params(["pretrain.enabled=true", "pretrain.objective=mlm"])
    texts = load_unlabeled(PROJECT_ROOT / params.paths.corpus / "unlabeled.txt")
    metrics = adapt_backbone(params, texts, out / "pretrained")
    return {**metrics, "peak_rss_mb": round(peak_rss_mb(), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["step", "finetune", "tfidf", "mlm"])
    parser.add_argument("--mode", choices=["forward", "adamw", "lora"], default="forward")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="params override for the fine-tune run (repeatable)")
    args = parser.parse_args()
    if args.what == "step":
        result = measure_step(args.mode, args.repeats)
    elif args.what == "tfidf":
        result = measure_tfidf()
    elif args.what == "finetune":
        result = measure_finetune(args.out, args.overrides)
    else:
        result = measure_mlm(args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
