"""Classification metrics and evaluation reports (JSON, Markdown, confusion-matrix PNG).

The metric functions are numpy-only so the gate and the serving side can reuse them
without torch; `torch_logits` imports torch when called. Loading a trained model folder
and choosing the task's report is `components.evaluate.scoring.evaluate_model`.

Report folder (`paths.eval`):
    report.json            accuracy, macro-F1, ECE, per-class precision/recall/F1/support,
                           confusion matrix, labels, source model meta
    report.md              the same as readable tables
    confusion_matrix.png   row-normalised heat map with counts
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from components.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from components.release.predictor import softmax

REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"
PLOT_FILE = "confusion_matrix.png"


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


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int) -> float:
    """ECE: |accuracy - confidence| of equal-width confidence bins, weighted by bin size."""
    probs, y_true = np.asarray(probs, dtype=np.float64), np.asarray(y_true)
    if len(y_true) == 0:
        return 0.0
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == y_true).astype(np.float64)
    # Bin index in [0, bins-1]; confidence 1.0 falls into the last bin.
    idx = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    conf_sum = np.bincount(idx, weights=confidence, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    return float(np.abs(acc_sum - conf_sum).sum() / len(y_true))


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
            "labels": list(labels), "per_class": per_class, "confusion_matrix": cm.tolist()}


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


def plot_confusion_matrix(cm: list[list[int]], labels: list[str], path: Path) -> Path:
    """Row-normalised confusion-matrix heat map with the raw counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    counts = np.asarray(cm, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write report.json, report.md and the confusion-matrix PNG into `out_dir` atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / REPORT_FILE, report)
        atomic_write_text(tmp / MARKDOWN_FILE, render_markdown(report))
        plot_confusion_matrix(report["confusion_matrix"], report["labels"], tmp / PLOT_FILE)
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
