"""Evaluation plots (PNG, matplotlib's Agg backend) drawn from numbers already measured.

Nothing here scores a model: each plot reads a report or a gate verdict.
    confusion_matrix.png    evaluate: row-normalised heat map with counts
    reliability.png         evaluate: accuracy vs confidence per ECE bin
    per_class_f1.png        gate: F1 per class (per entity type), challenger vs champion
    bootstrap_<metric>.png  gate: the paired bootstrap distribution of challenger - champion
                            against the rule's threshold, interval and margin
The report folders travel with the registered version (`reports/eval`, `reports/gate`), so
the plots are artifacts of the version's LoggedModel.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from components.io import atomic_write_bytes

CONFUSION_FILE = "confusion_matrix.png"
RELIABILITY_FILE = "reliability.png"
PER_CLASS_FILE = "per_class_f1.png"
BOOTSTRAP_PREFIX = "bootstrap_"
DPI = 90


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_confusion_matrix(cm: list[list[int]], labels: list[str], path: Path) -> Path:
    """Row-normalised confusion-matrix heat map with the raw counts written in the cells."""
    plt = _pyplot()
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
    return _save(fig, path)


def plot_reliability(calibration: dict[str, Any], ece: float, path: Path) -> Path:
    """Reliability diagram of the ECE bins: each bin's accuracy against its mean confidence
    (bars over the diagonal of perfect calibration), with the rows per bin below."""
    plt = _pyplot()
    edges = np.asarray(calibration["edges"])
    count = np.asarray(calibration["count"], dtype=np.float64)
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    used = count > 0
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.bar(centers[used], np.asarray(calibration["accuracy"])[used], width=width[used],
           edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot(np.asarray(calibration["confidence"])[used], np.asarray(calibration["accuracy"])[used],
            "o", color="C3", ms=4, label="mean confidence in bin")
    ax.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centers, count, width=width, color="C0", edgecolor="black")
    hist.set(xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel="rows")
    return _save(fig, path)


def class_f1(report: dict[str, Any] | None) -> dict[str, float]:
    """{class or entity type: F1} of a report (texts: `per_class`, entities: `per_type`)."""
    scores = (report or {}).get("per_class") or (report or {}).get("per_type") or {}
    return {name: float(s["f1"]) for name, s in scores.items()}


def plot_per_class_f1(challenger: dict[str, float], champion: dict[str, float] | None,
                      path: Path) -> Path:
    """Grouped bars: F1 per class of the challenger, next to the champion's when there is one."""
    plt = _pyplot()
    names = list(challenger)
    x = np.arange(len(names))
    width = 0.4 if champion else 0.6
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(names) + 2), 4))
    if champion:
        ax.bar(x - width / 2, [challenger[n] for n in names], width, label="challenger")
        ax.bar(x + width / 2, [champion.get(n, 0.0) for n in names], width, label="champion")
        ax.legend(fontsize=8)
    else:
        ax.bar(x, [challenger[n] for n in names], width, label="challenger")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="F1 on the test split",
           title="F1 per class" + (": challenger vs champion" if champion else " (first model)"))
    return _save(fig, path)


def plot_bootstrap(rule: dict[str, Any], path: Path) -> Path:
    """The paired bootstrap distribution of a `vs_champion.<metric>` rule (its `bootstrap`
    histogram) with the measured change, the interval, the allowed drop and the margin."""
    plt = _pyplot()
    hist = rule["bootstrap"]
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.stairs(counts, edges, fill=True, alpha=0.5, label="bootstrap resamples")
    ax.axvspan(rule["ci_low"], rule["ci_high"], color="C0", alpha=0.15,
               label=f"{rule['confidence']:.0%} paired interval")
    ax.axvline(rule["value"], color="C0", lw=2, label=f"measured {rule['value']:+.4f}")
    ax.axvline(0.0, color="grey", lw=1, ls=":")
    ax.axvline(rule["threshold"], color="C3", lw=2, ls="--",
               label=f"allowed drop {rule['threshold']:+.4f}")
    if "margin" in rule:
        ax.axvline(-rule["margin"], color="C1", lw=2, ls="-.",
                   label=f"non-inferiority margin {-rule['margin']:+.4f}")
    verdict = "pass" if rule["passed"] else "FAIL"
    ax.set(xlabel="challenger - champion", ylabel="resamples",
           title=f"{rule['name']}: {verdict} ({rule.get('outcome', '')})")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def write_gate_plots(verdict: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """per_class_f1.png and one bootstrap_<metric>.png per champion comparison, into
    `out_dir`; the paths written."""
    out_dir = Path(out_dir)
    written = []
    challenger = class_f1(verdict.get("report"))
    if challenger:
        champion = class_f1(verdict.get("champion_report")) or None
        written.append(plot_per_class_f1(challenger, champion, out_dir / PER_CLASS_FILE))
    for rule in verdict.get("rules", []):
        if rule["name"].startswith("vs_champion.") and rule.get("bootstrap"):
            metric = rule["name"].split(".", 1)[1]
            written.append(plot_bootstrap(rule, out_dir / f"{BOOTSTRAP_PREFIX}{metric}.png"))
    return written


def plot_files(*folders: str | Path) -> list[Path]:
    """The PNG plots in these report folders (e.g. `paths.eval`, `paths.gate`), in order."""
    return [p for folder in folders if Path(folder).is_dir()
            for p in sorted(Path(folder).glob("*.png"))]
