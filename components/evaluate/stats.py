"""Paired statistics shared by the gate, the task types and the benchmarks.

Two models scored on the same items are compared item by item: the paired bootstrap
resamples items with replacement and re-scores both models on each draw; McNemar's exact
test looks at the items exactly one of them got right. Items are summarised as rows of
additive counts (a text: its confusion-matrix cell; a sentence: its word and entity
counts), so a metric of any resample is the metric of a weighted row sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from components.config import NoiseConfig

CHUNK = 64  # resamples per matrix product: bounds memory at CHUNK x items weights


def _batched_macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of each row of resampled (y, pred) index matrices [R, n] in one bincount."""
    r = y.shape[0]
    offsets = (np.arange(r)[:, None] * k * k)
    cm = np.bincount((offsets + y * k + pred).ravel(), minlength=r * k * k).reshape(r, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    predicted, support = cm.sum(axis=1), cm.sum(axis=2)
    denom = predicted + support
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def bootstrap_delta_ci(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, metric: str,
                       num_labels: int, cfg: NoiseConfig) -> tuple[float, float]:
    """Paired bootstrap CI of metric(a) - metric(b): both scored on the same resampled rows."""
    rng = np.random.default_rng(cfg.seed)
    idx = rng.integers(0, len(y), size=(cfg.resamples, len(y)))
    ys, pa, pb = y[idx], pred_a[idx], pred_b[idx]
    if metric == "accuracy":
        delta = (pa == ys).mean(axis=1) - (pb == ys).mean(axis=1)
    else:
        delta = (_batched_macro_f1(ys, pa, num_labels) - _batched_macro_f1(ys, pb, num_labels))
    alpha = 1.0 - cfg.confidence
    lo, hi = np.quantile(delta, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def mcnemar_pvalue(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar test (binomial on the discordant pairs)."""
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def confusion_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy and macro-F1 from flattened confusion-matrix counts ([k*k] or [R, k*k])."""
    counts = np.asarray(counts, dtype=np.float64)
    k = int(round(math.sqrt(counts.shape[-1])))
    cm = counts.reshape(*counts.shape[:-1], k, k)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    total = cm.sum(axis=(-2, -1))
    predicted, support = cm.sum(axis=-2), cm.sum(axis=-1)
    denom = predicted + support
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    return {"accuracy": np.divide(tp.sum(-1), total, out=np.zeros_like(total),
                                  where=total > 0),
            "macro_f1": (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)}


def paired_bootstrap_draws(items_a: np.ndarray, items_b: np.ndarray,
                           metrics_of: Callable[[np.ndarray], dict[str, np.ndarray]],
                           names: Sequence[str], cfg: NoiseConfig) -> dict[str, np.ndarray]:
    """metric(a) - metric(b) on each of `cfg.resamples` paired resamples, per metric.

    `items_a` / `items_b` are [n, d] count rows of the same n items; each resample draws n
    items with replacement and scores both models on that draw.
    """
    n = len(items_a)
    rng = np.random.default_rng(cfg.seed)
    deltas: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for start in range(0, cfg.resamples, CHUNK):
        size = min(CHUNK, cfg.resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        weights = np.zeros((size, n))
        np.add.at(weights, (np.arange(size)[:, None], idx), 1.0)
        ma, mb = metrics_of(weights @ items_a), metrics_of(weights @ items_b)
        for m in names:
            deltas[m].append(ma[m] - mb[m])
    return {m: np.concatenate(deltas[m]) for m in names}


def interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap draws."""
    alpha = 1.0 - confidence
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def histogram(draws: np.ndarray, bins: int = 40) -> dict[str, list[float]]:
    """{"edges", "counts"} of bootstrap draws: what a plot of the distribution needs."""
    counts, edges = np.histogram(draws, bins=bins)
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def paired_bootstrap(items_a: np.ndarray, items_b: np.ndarray,
                     metrics_of: Callable[[np.ndarray], dict[str, np.ndarray]],
                     names: Sequence[str], cfg: NoiseConfig) -> dict[str, tuple[float, float]]:
    """Paired bootstrap interval of metric(a) - metric(b) for each metric in `names`
    (`paired_bootstrap_draws` summarised at `cfg.confidence`)."""
    draws = paired_bootstrap_draws(items_a, items_b, metrics_of, names, cfg)
    return {m: interval(d, cfg.confidence) for m, d in draws.items()}


def paired_accuracy(y: np.ndarray, a: np.ndarray, b: np.ndarray, cfg: NoiseConfig
                    ) -> dict[str, float | int | list[float]]:
    """Accuracy of predictions `a` minus `b` on gold `y` with the gate's noise measures:
    the paired bootstrap interval, McNemar's p and the discordant counts."""
    y, a, b = (np.asarray(v) for v in (y, a, b))
    n_labels = int(max(y.max(), a.max(), b.max())) + 1 if len(y) else 1
    lo, hi = bootstrap_delta_ci(y, a, b, "accuracy", n_labels, cfg)
    return {"delta": float((a == y).mean() - (b == y).mean()), "ci": [lo, hi],
            "confidence": cfg.confidence, "mcnemar_p": mcnemar_pvalue(a == y, b == y),
            "model_only_right": int(np.sum((a == y) & (b != y))),
            "baseline_only_right": int(np.sum((a != y) & (b == y))), "n": int(len(y))}
