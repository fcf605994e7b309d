"""The pretrain stage's guard: how well a linear probe on frozen features classifies.

A backbone is scored by the head fine-tuning would start from (`finetune.head_init:
linear_probe`): the classifier is built on it exactly as fine-tuning builds it (same
pooling, no PEFT), the head is fitted by L-BFGS on frozen features of the train split
(`finetune.linear_probe`), and the fitted head is scored on the validation split. Two
forward passes over the data and no training of the encoder, so a backbone that
adaptation made worse is caught before any fine-tuning is spent on it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from components.config import Params


def probe_backbone(params: Params, backbone: str | Path | None,
                   prepared_dir: str | Path) -> dict[str, Any]:
    """Fit a linear probe on frozen features of the train split, score it on validation.

    Args:
        backbone: a backbone folder (the adapted one), or None for `model.name_or_path`.
        prepared_dir: prepared data (train + validation splits, labels.json).

    Returns:
        accuracy, macro_f1, loss on the validation split; train_accuracy of the probe;
        n_train, n_validation, seconds.

    Raises:
        ValueError: the validation split is empty.
    """
    import torch

    from components.data.files import load_label_map, load_split
    from components.model.encoding import encode
    from components.model.modeling import build_classifier
    from components.train.finetune.batching import sequential_batches
    from components.train.finetune.linear_probe import fit_linear_probe
    from components.train.finetune.validation import evaluate_split

    t0 = time.perf_counter()
    torch.set_num_threads(params.model.num_threads)
    labels = load_label_map(prepared_dir)
    plain = params.model_copy(deep=True)
    plain.peft.method = "none"  # virtual tokens or adapters would change the features
    model, tokenizer = build_classifier(plain, labels, Path(backbone) if backbone else None)
    model.eval()
    train_texts, train_ids = _sample(*load_split(prepared_dir, "train"), params)
    val_texts, val_ids = load_split(prepared_dir, "validation")
    if not val_texts:
        raise ValueError("the guard needs a validation split (data.validation_fraction > 0)")
    size, max_len = params.pretrain.batch_size, params.model.max_length
    train = encode(tokenizer, train_texts, train_ids, max_len)
    fit = fit_linear_probe(model, sequential_batches(train, size, by_length=True),
                           params.finetune.linear_probe)
    scores = evaluate_split(model, encode(tokenizer, val_texts, val_ids, max_len), size,
                            len(labels))
    return {**scores, "train_accuracy": fit["accuracy"], "n_train": len(train_ids),
            "n_validation": len(val_ids), "seconds": round(time.perf_counter() - t0, 1)}


def _sample(texts: list[str], ids: list[int], params: Params) -> tuple[list[str], list[int]]:
    """At most `pretrain.probe_max_train_rows` train rows (seeded; 0 = all)."""
    cap = params.pretrain.probe_max_train_rows
    if not cap or len(texts) <= cap:
        return texts, ids
    rows = sorted(random.Random(params.pretrain.seed).sample(range(len(texts)), cap))
    return [texts[i] for i in rows], [ids[i] for i in rows]


def judge(before: dict[str, Any], after: dict[str, Any], keep_if_better: bool,
          ) -> tuple[bool, str]:
    """(keep the adapted backbone?, why) from the probe scores before and after adaptation."""
    change = after["accuracy"] - before["accuracy"]
    verdict = (f"probe accuracy on the validation split {before['accuracy']:.4f} -> "
               f"{after['accuracy']:.4f} ({change * 100:+.1f} pt)")
    if change >= 0:
        return True, f"{verdict}: kept the adapted backbone"
    if not keep_if_better:
        return True, f"{verdict}: kept the adapted backbone (pretrain.keep_if_better is off)"
    return False, f"{verdict}: adaptation lowered it, fine-tuning starts from the original"
