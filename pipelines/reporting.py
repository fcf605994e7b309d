"""What a retrain run tells people: a summary dict, Prefect artifacts and a console text."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from components.config import Params
from components.stages import StageResult
from components.task_types import task_type


def summarize(params: Params, done: dict[str, StageResult], *,
              unchanged: dict[str, Any] | None = None) -> dict[str, Any]:
    """One dict describing the run's outcome; the flow's return value."""
    from components.registry.tracking import redact, tracking_uri

    data = done["version"].result
    base = {"model_name": params.registry.model_name, "tracking_uri": redact(tracking_uri(params)),
            "data_version": data["data_version"], "input_version": data["input_version"],
            "dvc": data["dvc"], "dvc_lock": data.get("dvc_lock"),
            "near_duplicates": done["prepare"].get("near_duplicates", {}).get("rows", 0)}
    if unchanged is not None:
        version = unchanged["version"]
        aliases = {alias: version for alias in unchanged["aliases"]}
        repaired = done["register"].result if "register" in done else None
        if repaired is not None:
            aliases = {a: v for a, v in repaired["aliases"].items() if v == version}
        return {**base, "status": "unchanged", "version": version, "aliases": aliases,
                "run_id": unchanged["run_id"],
                "gate_passed": unchanged["tags"].get("gate_passed") == "true",
                "gate_reasons": [r for r in unchanged["tags"].get("gate_reasons", "").split("; ")
                                 if r],
                "moves": repaired["moves"] if repaired else [],
                "repaired": repaired is not None,
                "reused": ["pretrain", "finetune", "compress", "evaluate", "export", "gate",
                           *([] if repaired else ["register"])]}
    verdict, registered = done["gate"].result, done["register"].result
    metrics = task_type(params.task.type).metrics
    return {
        **base,
        "status": "promoted" if verdict["passed"] else "not promoted",
        "version": registered["version"], "moves": registered.get("moves", []),
        "aliases": registered.get("aliases", {}), "run_id": registered["run_id"],
        "strategy": params.finetune.strategy, "peft_method": params.peft.method,
        "steps": done["finetune"].get("steps"),
        "train_seconds": done["finetune"].get("train_seconds"),
        "max_length": done["finetune"].get("max_length"),
        "student": ({k: done["compress"].get(k) for k in (
            "keep_layers", "total_params", "teacher_params", "val_accuracy_vs_teacher",
            "speedup_vs_teacher")} if params.compress.enabled else None),
        "truncated_share": done["finetune"].get("truncated_share"),
        "test": {k: v for k, v in done["evaluate"].result.items() if isinstance(v, float)},
        "challenger": {m: verdict["metrics"][m] for m in metrics},
        "champion": ({m: verdict["champion_metrics"][m] for m in metrics}
                     if verdict.get("champion_metrics") else None),
        "champion_version": verdict.get("champion_version"),
        "int8": {k: v for k, v in done["export"].result.items() if not isinstance(v, dict)},
        "gate_passed": verdict["passed"], "gate_reasons": verdict.get("reasons", []),
        "gate_decision": done["gate"].summary,
        "reused": [name for name, r in done.items() if r.reused],
    }


def publish_artifacts(result: dict[str, Any], verdict: dict[str, Any],
                      card: str | None = None, plots: list[Path] | None = None,
                      version_url: str | None = None) -> None:
    """Gate report (Markdown), metrics table, MLflow ids, the version's model card, its
    evaluation plots and a link to the version in the MLflow UI as Prefect artifacts."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    from components.release.gate import render_verdict

    create_markdown_artifact(render_verdict(verdict), key="gate-report",
                             description="Gate verdict: every rule with value and threshold")
    rows = [{"metric": f"test/{k}", "value": round(v, 6)} for k, v in result["test"].items()]
    rows += [{"metric": f"int8/{k}", "value": v} for k, v in result["int8"].items()]
    create_table_artifact(rows, key="retrain-metrics", description="Test and export metrics")
    create_markdown_artifact(render_summary(result), key="model-version",
                             description="MLflow run and registered model version")
    if card:
        create_markdown_artifact(card, key="model-card",
                                 description="The version's model card")
    if plots:
        create_markdown_artifact(render_plots(plots), key="evaluation-plots",
                                 description="Confusion matrix, reliability, per-class F1 and "
                                             "the gate's bootstrap distributions")
    if version_url:
        create_link_artifact(version_url, link_text=f"{result['model_name']} "
                             f"v{result['version']} in MLflow", key="mlflow-model-version",
                             description="The registered model version in the MLflow UI")


def render_plots(plots: list[Path]) -> str:
    """Markdown embedding each PNG inline (a data URI: the Prefect UI needs no access to
    MLflow's artifact store to show it)."""
    out = []
    for path in plots:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        out += [f"### {Path(path).stem.replace('_', ' ')}", "",
                f"![{Path(path).stem}](data:image/png;base64,{data})", ""]
    return "\n".join(out)


def render_summary(result: dict[str, Any]) -> str:
    """Where the run ended and why, as Markdown (also printed by `tuneline run`)."""
    lines = [f"**{result['model_name']}**: {result['status']}"]
    if result["status"] == "skipped":
        return "\n".join(lines + [f"- {result['reason']}"]) + "\n"
    if result.get("version"):
        lines.append(f"- model version: v{result['version']} (aliases: "
                     f"{_aliases(result.get('aliases', {}))})")
    if result["status"] == "unchanged":
        verdict = "passed" if result.get("gate_passed") else "rejected"
        lines.append("- nothing to train: these data, params and code made this version "
                     f"already (gate {verdict})")
        if result.get("repaired"):
            lines.append("- its registration had stopped half-way: finished now")
    challenger, champion = result.get("challenger"), result.get("champion")
    if challenger:
        side = (f"; champion v{result['champion_version']}: "
                + ", ".join(f"{m} {v:.4f}" for m, v in champion.items())
                if champion else " (first model)")
        lines.append("- test split, challenger: "
                     + ", ".join(f"{m} {v:.4f}" for m, v in challenger.items()) + side)
    if result.get("gate_decision"):
        lines.append(f"- gate: {result['gate_decision']}")
    for move in result.get("moves", []):
        lines.append(f"- alias move: {move}")
    if result.get("near_duplicates"):
        lines.append(f"- data warning: {result['near_duplicates']} rows have a near-duplicate "
                     "in another split (see data/prepared/report.json)")
    lines.append(f"- data: {result['data_version']} ({result['dvc']})")
    if result.get("run_id"):
        lines.append(f"- MLflow run: {result['run_id']} at {result['tracking_uri']}")
    if result.get("reused") and result["status"] != "unchanged":
        lines.append(f"- reused (inputs unchanged): {', '.join(result['reused'])}")
    return "\n".join(lines) + "\n"


def _aliases(aliases: dict[str, Any]) -> str:
    return ", ".join(f"@{a}=v{v}" for a, v in sorted(aliases.items())) or "none"
