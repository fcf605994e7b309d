"""What a retrain run tells people: a summary dict, Prefect artifacts and a console text."""

from __future__ import annotations

from typing import Any

from components.config import Params


def summarize(params: Params, *, unchanged: dict[str, Any] | None = None, run_id: str = "",
              trained: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None,
              parity: dict[str, Any] | None = None, verdict: dict[str, Any] | None = None,
              published: dict[str, Any] | None = None,
              data: dict[str, Any] | None = None) -> dict[str, Any]:
    """One dict describing the run's outcome; the flow's return value."""
    from components.tracking import tracking_uri

    base = {"model_name": params.registry.model_name, "tracking_uri": tracking_uri(params)}
    if unchanged is not None:
        return {**base, "status": "unchanged", "version": unchanged["version"],
                "aliases": {alias: unchanged["version"] for alias in unchanged["aliases"]},
                "run_id": unchanged["run_id"],
                "skipped": ["finetune", "evaluate", "export", "gate", "register"]}
    trained, evaluation = trained or {}, evaluation or {}
    verdict, published = verdict or {}, published or {}
    skipped = ["finetune"] if trained.get("skipped") else []
    return {
        **base,
        "status": "promoted" if verdict.get("passed") else "not promoted",
        "version": published.get("version"), "moves": published.get("moves", []),
        "aliases": published.get("aliases", {}), "run_id": run_id,
        "data_hash": (data or {}).get("data_hash"), "dvc": (data or {}).get("dvc"),
        "strategy": params.finetune.strategy, "peft_method": params.peft.method,
        "steps": trained.get("steps"), "train_seconds": trained.get("train_seconds"),
        "test": {k: v for k, v in evaluation.items() if isinstance(v, float)},
        "int8": {k: v for k, v in (parity or {}).items() if not isinstance(v, dict)},
        "gate_passed": verdict.get("passed"), "gate_reasons": verdict.get("reasons", []),
        "skipped": skipped,
    }


def publish_artifacts(result: dict[str, Any], verdict: dict[str, Any]) -> None:
    """Gate report (Markdown), metrics table and MLflow ids as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from components.gate import render_verdict

    create_markdown_artifact(render_verdict(verdict), key="gate-report",
                             description="Gate verdict: every rule with value and threshold")
    rows = [{"metric": f"test/{k}", "value": round(v, 6)} for k, v in result["test"].items()]
    rows += [{"metric": f"int8/{k}", "value": v} for k, v in result["int8"].items()]
    create_table_artifact(rows, key="retrain-metrics", description="Test and export metrics")
    create_markdown_artifact(render_summary(result), key="model-version",
                             description="MLflow run and registered model version")


def render_summary(result: dict[str, Any]) -> str:
    """Where to look after a run, as Markdown (also printed by `tuneline run`)."""
    lines = [f"**{result['model_name']}**: {result['status']}"]
    if result.get("version"):
        lines.append(f"- model version: v{result['version']} (aliases: "
                     f"{_aliases(result.get('aliases', {}))})")
    for move in result.get("moves", []):
        lines.append(f"- alias move: {move}")
    for reason in result.get("gate_reasons", []):
        lines.append(f"- gate: {reason}")
    if result.get("run_id"):
        lines.append(f"- MLflow run: {result['run_id']} at {result['tracking_uri']}")
    if result.get("skipped"):
        lines.append(f"- skipped (unchanged inputs): {', '.join(result['skipped'])}")
    return "\n".join(lines) + "\n"


def _aliases(aliases: dict[str, Any]) -> str:
    return ", ".join(f"@{a}=v{v}" for a, v in sorted(aliases.items())) or "none"
