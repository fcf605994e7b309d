"""Classification metrics and evaluation reports (JSON, Markdown, confusion-matrix PNG).

The metric functions are numpy-only so the gate and the serving side can reuse them
without torch; `torch_logits` imports torch when called. Loading a trained model folder
and choosing the task's report is `components.evaluate.scoring.evaluate_model`.

Report folder (`paths.eval`):
    report.json            accuracy, macro-F1, ECE, per-class precision/recall/F1/support,
                           confusion matrix, labels, source model meta
    report.md              the same as readable tables
    confusion_matrix.png   row-normalised heat map with counts
    reliability.png        accuracy vs confidence per ECE bin (components/evaluate/plots.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.evaluate.plots import (
    CONFUSION_FILE,
    RELIABILITY_FILE,
    plot_confusion_matrix,
    plot_reliability,
)
from components.io import atomic_dir, atomic_write_json, atomic_write_text
from components.release.predictor import softmax

REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"
PLOT_FILE = CONFUSION_FILE


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> np.ndarray:
    """Counts [true class, predicted class] as an int64 matrix."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * num_labels + y_pred, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    A class never predicted (or never present) scores 0 rather than NaN, as in sklearn's
    `zero_division=0`, so macro averages stay defined on small test sets.
    """
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    return float(np.mean(y_true == np.asarray(y_pred))) if len(y_true) else 0.0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Unweighted mean F1 over the classes that occur in `y_true` or `y_pred`."""
    cm = confusion_matrix(y_true, y_pred, num_labels)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return 0.0
    return float(per_class_scores(cm)["f1"][present].mean())


def calibration_bins(probs: np.ndarray, y_true: np.ndarray, bins: int) -> dict[str, Any]:
    """Equal-width confidence bins: {"edges", "count", "confidence" (mean), "accuracy"}.

    A bin without rows has confidence and accuracy 0; confidence 1.0 falls into the last bin.
    """
    probs, y_true = np.asarray(probs, dtype=np.float64), np.asarray(y_true)
    count = np.zeros(bins)
    conf_sum, acc_sum = np.zeros(bins), np.zeros(bins)
    if len(y_true):
        confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
        idx = np.minimum((confidence * bins).astype(np.int64), bins - 1)
        count = np.bincount(idx, minlength=bins).astype(np.float64)
        conf_sum = np.bincount(idx, weights=confidence, minlength=bins)
        acc_sum = np.bincount(idx, weights=(predicted == y_true).astype(np.float64),
                              minlength=bins)
    safe = np.maximum(count, 1)
    return {"edges": np.linspace(0, 1, bins + 1).tolist(), "count": count.astype(int).tolist(),
            "confidence": (conf_sum / safe).tolist(), "accuracy": (acc_sum / safe).tolist()}


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int) -> float:
    """ECE: |accuracy - confidence| of equal-width confidence bins, weighted by bin size."""
    if len(y_true) == 0:
        return 0.0
    cal = calibration_bins(probs, y_true, bins)
    count = np.asarray(cal["count"], dtype=np.float64)
    gap = np.abs(np.asarray(cal["accuracy"]) - np.asarray(cal["confidence"]))
    return float((gap * count).sum() / len(y_true))


def compute_report(y_true: list[int] | np.ndarray, logits: np.ndarray, labels: list[str],
                   ece_bins: int) -> dict[str, Any]:
    """Every evaluation number for one set of logits against the true class ids."""
    y_true = np.asarray(y_true, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != (len(y_true), len(labels)):
        raise ValueError(f"logits shape {logits.shape} does not match "
                         f"{len(y_true)} rows x {len(labels)} labels")
    y_pred = logits.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    scores = per_class_scores(cm)
    per_class = {name: {"precision": float(scores["precision"][i]),
                        "recall": float(scores["recall"][i]), "f1": float(scores["f1"][i]),
                        "support": int(scores["support"][i])}
                 for i, name in enumerate(labels)}
    return {"n": int(len(y_true)), "accuracy": accuracy(y_true, y_pred),
            "macro_f1": macro_f1(y_true, y_pred, len(labels)),
            "ece": expected_calibration_error(softmax(logits), y_true, ece_bins),
            "labels": list(labels), "per_class": per_class, "confusion_matrix": cm.tolist(),
            "calibration": calibration_bins(softmax(logits), y_true, ece_bins)}


def headline_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of a report (what gets logged and gated)."""
    return {k: float(report[k]) for k in ("accuracy", "macro_f1", "ece", "n")}


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: headline numbers, per-class table, confusion table."""
    labels = report["labels"]
    lines = [f"# Evaluation report ({report.get('split', 'test')} split, n={report['n']})", "",
             "| metric | value |", "|---|---|",
             f"| accuracy | {report['accuracy']:.4f} |",
             f"| macro-F1 | {report['macro_f1']:.4f} |",
             f"| expected calibration error | {report['ece']:.4f} |", "",
             "## Per class", "", "| class | precision | recall | F1 | support |",
             "|---|---|---|---|---|"]
    for name in labels:
        s = report["per_class"][name]
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} "
                     f"| {s['support']} |")
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| true \\ pred | " + " | ".join(labels) + " |",
              "|---" * (len(labels) + 1) + "|"]
    for name, row in zip(labels, report["confusion_matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write report.json, report.md, the confusion matrix and the reliability diagram into
    `out_dir` atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / REPORT_FILE, report)
        atomic_write_text(tmp / MARKDOWN_FILE, render_markdown(report))
        plot_confusion_matrix(report["confusion_matrix"], report["labels"], tmp / PLOT_FILE)
        if report.get("calibration"):
            plot_reliability(report["calibration"], report["ece"], tmp / RELIABILITY_FILE)
    return out_dir


def torch_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int,
                 batch_size: int) -> np.ndarray:
    """Logits [len(texts), num_labels] of a torch classifier, in batches, without grad."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i: i + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            out.append(logits.logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
