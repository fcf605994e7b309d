"""Stage `pretrain`: domain-adaptive pretraining of the backbone, guarded by a measurement.

Its text: the ingested unlabeled file (`paths.unlabeled`) when there is one, else the
texts of the prepared train split. Texts of the validation and test splits are never
trained on: the guard scores on validation, the gate on test.

The guard: a linear probe on frozen features (components/train/pretrain/probe.py) scores the
original backbone and the adapted one on the validation split. With
`pretrain.keep_if_better` an adapted backbone that scores lower (or whose training
diverged) is discarded. The output folder then holds either the adapted backbone or only
`pretrain_metrics.json` saying `"backbone": "original"` and why; `starting_backbone` is
how the finetune stage reads that.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.config import Params
from components.io import atomic_dir, atomic_write_json
from components.stages.base import StageResult, run_stage
from components.stages.chain import PRETRAIN_MARKER as MARKER
from components.stages.chain import pretraining_texts

log = logging.getLogger("tuneline.stages")



def pretrain(params: Params, *, force: bool = False, logger: Any = None) -> StageResult:
    """Adapt the backbone on unlabeled text, keep it only if the probe says it helps."""

    def compute(out: Path) -> dict[str, Any]:
        if not params.pretrain.enabled:
            _write_marker(out, {"enabled": False})
            return {"enabled": False}
        return _adapt_and_guard(params, out, logger)

    return run_stage("pretrain", params, compute, describe, force=force)


def _adapt_and_guard(params: Params, out: Path, logger: Any) -> dict[str, Any]:
    from components.train import auto
    from components.train.pretrain import PretrainDiverged, adapt_backbone, judge, probe_backbone

    prepared = params.paths.prepared
    params, _ = auto.resolve(params, prepared)  # the input length finetune will use
    texts, source, n_dropped = pretraining_texts(params)
    probe_before = probe_backbone(params, None, prepared)
    log.info("pretrain: linear probe on the original backbone: validation accuracy %.4f",
             probe_before["accuracy"])
    base = {"enabled": True, "objective": params.pretrain.objective, "texts": source,
            "dropped_validation_test_texts": n_dropped, "probe_before": probe_before}
    try:
        adapted = adapt_backbone(params, texts, out, logger=logger)
    except PretrainDiverged as exc:
        if not params.pretrain.keep_if_better:
            raise
        return _keep_original(out, {**base, "reason": f"{exc}; fine-tuning starts from "
                                                         "the original backbone"})
    probe_after = probe_backbone(params, out, prepared)
    keep, reason = judge(probe_before, probe_after, params.pretrain.keep_if_better)
    result = {**base, **adapted, "probe_after": probe_after, "reason": reason}
    if not keep:
        return _keep_original(out, result)
    log.info("pretrain: %s", reason)
    result["backbone"] = "adapted"
    atomic_write_json(out / MARKER, result)
    return result


def _keep_original(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    log.warning("pretrain: %s", result["reason"])
    result = {**result, "backbone": "original"}
    _write_marker(out, result)  # replaces the adapted weights: nothing can load them
    return result


def _write_marker(out: Path, content: dict[str, Any]) -> None:
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / MARKER, content)




def describe(result: dict[str, Any]) -> str:
    if not result.get("enabled"):
        return "off (pretrain.enabled: false); finetune starts from the backbone"
    loss = ""
    if "heldout_loss_after" in result:
        warm = result.get("heldout_loss_after_head_warmup")
        loss = (f"held-out {result['objective']} loss {result['heldout_loss_before']:.3f} -> "
                + (f"{warm:.3f} (head warm-up) -> " if warm is not None else "")
                + f"{result['heldout_loss_after']:.3f}; ")
    return f"{loss}{result['reason']} (on {result['texts']})"
