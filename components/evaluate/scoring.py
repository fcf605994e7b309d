"""Score a trained model folder on the test split: reload it, check it, ask its task type.

The numbers and files are the task type's (`components.task_types`): for texts the report
of `components.evaluate.report`, for entities that of `components.task_types.token_eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.model.modeling import TrainedModel, load_trained
from components.task_types import task_type


def load_for_test(model_dir: str | Path, prepared_dir: str | Path) -> TrainedModel:
    """The trained model folder reloaded, checked against the prepared label map.

    Raises:
        FileNotFoundError: the model folder or the prepared label map is missing.
        ValueError: the model's labels differ from the prepared label map.
    """
    from components.data.files import load_label_map

    trained = load_trained(model_dir)
    labels = load_label_map(prepared_dir)
    if trained.labels != labels:
        raise ValueError(f"model labels {trained.labels} differ from the prepared label map "
                         f"{labels} in {prepared_dir}")
    return trained


def evaluate_model(model_dir: str | Path, prepared_dir: str | Path, out_dir: str | Path,
                   params: Any) -> dict[str, float]:
    """Score a trained model folder on the test split and write the report folder.

    Returns:
        The task's headline metrics (texts: accuracy, macro_f1, ece, n; entities: also
        entity_f1, entity_precision, entity_recall).

    Raises:
        FileNotFoundError: the model folder or the prepared test split is missing.
        ValueError: the model's labels differ from the prepared label map; an empty test split.
    """
    trained = load_for_test(model_dir, prepared_dir)
    return task_type(params.task.type).evaluate(trained, prepared_dir, out_dir, params)
