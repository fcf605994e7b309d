"""Stage `evaluate`: the shipped torch model (the distilled student when compress is on)
scored on the test split by its task type: texts get accuracy, macro-F1, per-class scores,
calibration and a confusion matrix; entities get entity precision / recall / F1 per type."""

from __future__ import annotations

from typing import Any

from components.config import Params
from components.stages.base import StageResult, run_stage
from components.stages.chain import shipped_model_dir


def evaluate(params: Params, *, force: bool = False) -> StageResult:
    """Write `paths.eval` (report.json / report.md, and the task type's extras) for the
    shipped model (`chain.shipped_model_dir`)."""
    from components.evaluate.scoring import evaluate_model

    return run_stage("evaluate", params, lambda out: evaluate_model(
        shipped_model_dir(params), params.paths.prepared, out, params), describe, force=force)


def describe(m: dict[str, Any]) -> str:
    if "entity_f1" in m:
        return (f"test entity F1 {m['entity_f1']:.4f} (precision {m['entity_precision']:.4f}, "
                f"recall {m['entity_recall']:.4f}), token accuracy {m['accuracy']:.4f} "
                f"(n={int(m['n'])} sentences)")
    return (f"test accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, "
            f"ECE {m['ece']:.4f} (n={int(m['n'])})")
