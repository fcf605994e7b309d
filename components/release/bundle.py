"""A trained model folder exported as a served bundle, measured on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params
from components.evaluate.scoring import load_for_test
from components.release.export import export_model
from components.release.int8 import CANDIDATES
from components.release.predictor import ServedGraph
from components.task_types import task_type


def export_bundle(model_dir: str | Path, prepared_dir: str | Path, out_dir: str | Path,
                  params: Params) -> dict[str, Any]:
    """Reload the trained model folder and export it; parity is measured on the test split,
    calibrated int8 candidates are calibrated on the training split.

    Raises:
        FileNotFoundError: the model folder or the prepared test split is missing.
        ValueError: the model's labels differ from the prepared label map.
    """
    trained = load_for_test(model_dir, prepared_dir)
    kind = task_type(params.task.type)
    rows = kind.parity_rows(prepared_dir)

    def measure(model: Any, bundle: Path, texts: list[str], _targets: list[Any],
                _params: Params, graph: ServedGraph) -> dict[str, Any]:
        return kind.measure(model, bundle, rows.head(len(texts)), params, graph)

    calibrated = any(CANDIDATES[name].calibrated for name in params.export.int8_candidates)
    calibration = (kind.texts(prepared_dir, "train")[:params.export.calibration_texts]
                   if calibrated else None)
    return export_model(trained.model, trained.tokenizer, trained.labels, out_dir, params,
                        texts=rows.texts, y_true=rows.targets, meta=trained.meta,
                        measure=measure, calibration_texts=calibration)
