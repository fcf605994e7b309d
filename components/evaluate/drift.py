"""Prediction distributions and the population stability index (PSI) between two of them.

A model version's reference is what it predicts on its own test split: the share of each
predicted label and the share of top-1 confidences in fixed bins. Registration stores it
with the version; the server counts the same two distributions on live traffic and
exports the PSI of each against the reference it loaded with the version.

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)     a: live shares, e: reference shares

with every share floored at `epsilon`, so a bin empty on one side adds a large but finite
term. Rule of thumb: < 0.1 no real change, 0.1-0.25 a moderate shift, > 0.25 a large one.

numpy only: the serving process imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_FILE = "prediction_reference.json"
REFERENCE_FORMAT = 1


def check_edges(edges: Sequence[float]) -> np.ndarray:
    """Confidence bin edges as an array: increasing, from 0 to 1, at least one bin.

    Raises:
        ValueError: the edges do not cover [0, 1] in increasing order.
    """
    arr = np.asarray(edges, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2 or arr[0] != 0.0 or arr[-1] != 1.0 \
            or np.any(np.diff(arr) <= 0):
        raise ValueError(f"confidence bin edges must increase from 0.0 to 1.0, got {list(edges)}")
    return arr


def confidence_bins(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each top-1 confidence; bins are (e_i, e_i+1] (the first also holds 0),
    so they match the `le` buckets of a Prometheus histogram with the same edges."""
    idx = np.searchsorted(edges, confidence, side="left") - 1
    return np.clip(idx, 0, len(edges) - 2)


def top1(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class ids, top-1 softmax probabilities) of a [rows, classes] logit array."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"logits must be [rows, classes], got shape {z.shape}")
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    probs = e / e.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    return best, probs[np.arange(len(best)), best]


def prediction_distribution(logits: np.ndarray, labels: Sequence[str],
                            edges: Sequence[float]) -> dict[str, Any]:
    """Shares of predicted labels and of top-1 confidence bins over the rows of `logits`.

    Args:
        logits: [rows, classes] model outputs (any scale; softmax is applied here).
        labels: class names, index = class id.
        edges: confidence bin edges from 0.0 to 1.0.

    Returns:
        {"format", "rows", "labels": {"names", "fractions"},
         "confidence": {"edges", "fractions"}}: a JSON-ready reference.

    Raises:
        ValueError: no rows, a logit width that differs from the label count, or bad edges.
    """
    edges_arr = check_edges(edges)
    if len(logits) == 0:
        raise ValueError("a prediction distribution needs at least one row")
    if np.shape(logits)[1] != len(labels):
        raise ValueError(f"logits have {np.shape(logits)[1]} classes, labels {len(labels)}")
    best, conf = top1(logits)
    n = len(best)
    label_counts = np.bincount(best, minlength=len(labels))
    conf_counts = np.bincount(confidence_bins(conf, edges_arr), minlength=len(edges_arr) - 1)
    return {"format": REFERENCE_FORMAT, "rows": int(n),
            "labels": {"names": list(labels), "fractions": (label_counts / n).tolist()},
            "confidence": {"edges": edges_arr.tolist(), "fractions": (conf_counts / n).tolist()}}


def psi(actual_counts: np.ndarray, expected_fractions: Sequence[float],
        epsilon: float) -> float:
    """PSI of observed counts against reference shares (same bins, same order).

    Raises:
        ValueError: the bin counts differ or there are no observations.
    """
    counts = np.asarray(actual_counts, dtype=np.float64)
    expected = np.asarray(expected_fractions, dtype=np.float64)
    if counts.shape != expected.shape:
        raise ValueError(f"PSI needs the same bins on both sides: {counts.shape} vs "
                         f"{expected.shape}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("PSI needs at least one observation")
    a = np.maximum(counts / total, epsilon)
    e = np.maximum(expected, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def check_reference(ref: Any, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate a reference distribution (as `prediction_distribution` returns it).

    Raises:
        ValueError: a field is missing or inconsistent, or its labels differ from `labels`.
    """
    try:
        if ref["format"] != REFERENCE_FORMAT:
            raise ValueError(f"unknown reference format {ref['format']!r}")
        names, label_fr = ref["labels"]["names"], ref["labels"]["fractions"]
        edges, conf_fr = ref["confidence"]["edges"], ref["confidence"]["fractions"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"prediction reference is missing {exc}") from None
    if len(names) != len(label_fr) or len(conf_fr) != len(check_edges(edges)) - 1:
        raise ValueError("prediction reference: bins and fractions differ in length")
    if labels is not None and list(names) != list(labels):
        raise ValueError(f"prediction reference labels {names} differ from the model's {labels}")
    for what, fr in (("labels", label_fr), ("confidence", conf_fr)):
        if abs(sum(fr) - 1.0) > 1e-6 or min(fr) < 0:
            raise ValueError(f"prediction reference: {what} fractions do not sum to 1")
    return ref


def load_reference(path: str | Path, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Read and validate a reference JSON file (see `check_reference`)."""
    return check_reference(json.loads(Path(path).read_text()), labels)
