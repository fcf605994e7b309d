"""Stage `pretrain`: domain-adaptive pretraining of the backbone, or a marker when off.

Its text: the ingested unlabeled file (`paths.unlabeled`) when there is one, else the
texts of the prepared train split (never validation or test: their texts must stay unseen).
"""

from __future__ import annotations

from typing import Any

from components.config import Params
from components.io import atomic_dir, atomic_write_json
from components.stages.base import StageResult, run_stage
from components.stages.ingest import snapshot_file
from components.stages.spec import UNLABELED, resolve

MARKER = "pretrain_metrics.json"


def pretrain(params: Params, *, force: bool = False, logger: Any = None) -> StageResult:
    """Adapt the backbone on unlabeled text and save it to `paths.pretrained`."""

    def compute() -> dict[str, Any]:
        if not params.pretrain.enabled:
            with atomic_dir(params.paths.pretrained) as tmp:
                atomic_write_json(tmp / MARKER, {"enabled": False})
            return {"enabled": False}
        from components.pretrain import pretrain_mlm

        texts, source = pretraining_texts(params)
        result = pretrain_mlm(params, texts, params.paths.pretrained, logger=logger)
        return {"enabled": True, "texts": source, **result}

    return run_stage("pretrain", params, compute, describe, force=force)


def pretraining_texts(params: Params) -> tuple[list[str], str]:
    """(texts, where they came from): the unlabeled snapshot, else the train split."""
    from components.data_io import load_split, load_unlabeled

    unlabeled = snapshot_file(resolve(UNLABELED, params))
    if unlabeled is not None:
        return load_unlabeled(unlabeled), str(unlabeled)
    return load_split(params.paths.prepared, "train")[0], "the prepared train split"


def describe(result: dict[str, Any]) -> str:
    if not result.get("enabled"):
        return "off (pretrain.enabled: false); finetune starts from the backbone"
    return (f"held-out MLM loss {result['heldout_loss_before']:.3f} -> "
            f"{result['heldout_loss_after']:.3f} on {result['texts']}")
