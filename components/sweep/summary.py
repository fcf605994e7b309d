"""What a sweep found: the trial table, the best values, a plot, and the winner's model.

Written to `<sweep folder>/summary/` (trials.json, trials.csv, summary.md, sweep.png) and
logged to the sweep's MLflow run. The plot shows the validation score of every trial
against its number and against the CPU-seconds the study had used when it ended, with the
best score so far as a step line; pruned trials at their last reported score, failed ones
as marks on the axis.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from pathlib import Path
from typing import Any

from components.config import Params
from components.io import atomic_dir, atomic_write_json, atomic_write_text
from components.sweep.space import as_overrides
from components.sweep.study import SweepPlan, cpu_seconds_used, load_study

log = logging.getLogger("tuneline.sweep")
PLOT_FILE = "sweep.png"
COLUMNS = ("number", "state", "value", "cpu_seconds", "wall_seconds", "steps", "reused",
           "worker", "run_id", "reason")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial, in trial order (the study is the record of truth)."""
    rows = []
    for t in sorted(study.trials, key=lambda t: t.number):
        attrs = t.user_attrs
        last = (t.intermediate_values[max(t.intermediate_values)]
                if t.intermediate_values else None)
        state = attrs.get("state") if attrs.get("state") == "interrupted" else t.state.name
        rows.append({"number": t.number, "state": state,
                     "value": t.value if t.value is not None else None,
                     "last_reported": last, "params": dict(t.params),
                     **{k: attrs.get(k) for k in COLUMNS if k not in ("number", "state",
                                                                      "value")}})
    return rows


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    return max(done, key=lambda r: (r["value"], -r["number"])) if done else None


def summarize(params: Params, plan: SweepPlan, stopped: str) -> dict[str, Any]:
    """Write the summary folder, log it to the sweep's MLflow run, return the summary."""
    study = load_study(params, plan)
    rows = trial_rows(study)
    best = best_row(rows)
    counts = {s: sum(r["state"] == s for r in rows) for s in
              ("COMPLETE", "PRUNED", "FAIL", "interrupted", "RUNNING", "WAITING")}
    summary = {"study": plan.study, "metric": params.sweep.metric, "stopped": stopped,
               "trials": rows, "counts": {k: v for k, v in counts.items() if v},
               "cpu_seconds": round(cpu_seconds_used(study), 1),
               "best": best, "best_overrides": as_overrides(best["params"]) if best else [],
               "parent_run_id": plan.parent_run_id, "folder": str(plan.folder / "summary")}
    with atomic_dir(plan.folder / "summary") as tmp:
        atomic_write_json(tmp / "trials.json", summary)
        atomic_write_text(tmp / "trials.csv", _csv(rows))
        atomic_write_text(tmp / "summary.md", render_markdown(summary))
        plot_trials(rows, params.sweep.metric, tmp / PLOT_FILE)
    _log_to_mlflow(params, plan, summary)
    return summary


def _csv(rows: list[dict[str, Any]]) -> str:
    keys = sorted({k for r in rows for k in r["params"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*COLUMNS[:3], *keys, *COLUMNS[3:]])
    for r in rows:
        writer.writerow([r["number"], r["state"], r["value"], *(r["params"].get(k) for k in keys),
                         *(r.get(c) for c in COLUMNS[3:])])
    return out.getvalue()


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows for a table artifact: one column per searched param."""
    return [{"trial": r["number"], "state": r["state"].lower(),
             "score": None if r["value"] is None else round(r["value"], 4),
             **{k: float(f"{v:.4g}") if isinstance(v, float) else v
                for k, v in r["params"].items()},
             "cpu_s": r.get("cpu_seconds"), "reused": bool(r.get("reused")),
             "note": (r.get("reason") or "")[:120]} for r in rows]


def render_markdown(summary: dict[str, Any]) -> str:
    best = summary["best"]
    counts = ", ".join(f"{v} {k.lower()}" for k, v in summary["counts"].items())
    lines = [f"**Sweep {summary['study']}**: {counts}; {summary['cpu_seconds']:.0f} CPU-s; "
             f"stopped: {summary['stopped']}", ""]
    if best:
        lines.append(f"Best: trial {best['number']}, validation {summary['metric']} "
                     f"{best['value']:.4f}")
        lines += [f"- `{o}`" for o in summary["best_overrides"]]
    else:
        lines.append("No trial finished: no winner.")
    if summary.get("confirmation"):
        lines += ["", f"Confirmation: {summary['confirmation']['text']}"]
    rows = table(summary["trials"])
    if rows:
        head = list(rows[0])
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join("" if r[h] is None else str(r[h]) for h in head) + " |"
                  for r in rows]
    return "\n".join(lines) + "\n"


def plot_trials(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Validation score vs trial number and vs cumulative CPU-seconds (see module doc)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    cpu = 0.0
    points = []
    for r in rows:
        cpu += r.get("cpu_seconds") or 0.0
        points.append((r["number"], cpu, r))
    scores = [r["value"] if r["value"] is not None else r["last_reported"] for r in rows]
    known = [s for s in scores if s is not None]
    floor = min(known) if known else 0.0
    panels = ((axes[0], 0, "trial"), (axes[1], 1, "CPU-seconds, cumulative in trial order"))
    for ax, xi, label in panels:
        _scatter(ax, points, xi, floor)
        best, line = None, []
        for p in points:
            r = p[2]
            if r["state"] == "COMPLETE" and r["value"] is not None:
                best = r["value"] if best is None else max(best, r["value"])
            if best is not None:
                line.append((p[xi], best))
        if line:
            ax.step(*zip(*line, strict=True), where="post", color="black", lw=1,
                    label="best so far")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation {metric}")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scatter(ax: Any, points: list[tuple], xi: int, floor: float) -> None:
    styles = {"COMPLETE": ("o", "tab:blue", "complete"), "PRUNED": ("x", "tab:orange", "pruned"),
              "FAIL": ("v", "tab:red", "failed"), "interrupted": ("v", "tab:gray", "interrupted")}
    for state, (marker, color, label) in styles.items():
        xs = [p[xi] for p in points if p[2]["state"] == state]
        ys = [p[2]["value"] if p[2]["value"] is not None else
              (p[2]["last_reported"] if p[2]["last_reported"] is not None else floor)
              for p in points if p[2]["state"] == state]
        if xs:
            ax.scatter(xs, ys, marker=marker, color=color, label=label, zorder=3)


def _log_to_mlflow(params: Params, plan: SweepPlan, summary: dict[str, Any]) -> None:
    from components.registry import tracking

    client = tracking.get_client(params)
    metrics = {f"sweep/{k.lower()}_trials": v for k, v in summary["counts"].items()}
    metrics["sweep/cpu_seconds"] = summary["cpu_seconds"]
    best = summary["best"]
    if best:
        metrics[f"sweep/best_val_{summary['metric']}"] = best["value"]
        client.set_tag(plan.parent_run_id, "sweep_best_trial", str(best["number"]))
        client.set_tag(plan.parent_run_id, "sweep_best_overrides",
                       " ".join(summary["best_overrides"])[:5000])
    tracking.MlflowLogger(params, plan.parent_run_id)(metrics, len(summary["trials"]))
    client.set_tag(plan.parent_run_id, "sweep_stopped", summary["stopped"][:5000])
    client.log_artifacts(plan.parent_run_id, summary["folder"], "sweep")


def place_winner(params: Params, plan: SweepPlan, best: dict[str, Any]) -> bool:
    """Put the winning trial's model into `paths.model` when it is the model these params
    (base + the winner's values) describe; the finetune stage then reuses it instead of
    training again. Returns False when it cannot (weights gone, other fingerprint)."""
    from components.model.modeling import WEIGHTS_FILE
    from components.stages.base import stored_result
    from components.stages.spec import fingerprint
    from components.sweep.space import with_values

    winner = with_values(params, best["params"])
    fp = fingerprint("finetune", winner)
    source = plan.folder / "models" / fp
    if stored_result(Path(winner.paths.model), fp) is not None:
        return True
    if stored_result(source, fp) is None or not (source / WEIGHTS_FILE).exists():
        log.info("sweep: the winner's model is not in %s: the finetune stage trains it", source)
        return False
    with atomic_dir(winner.paths.model) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    log.info("sweep: winner trial %d's model (%s) placed in %s", best["number"], fp,
             winner.paths.model)
    return True
