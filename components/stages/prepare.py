"""Stage `prepare`: validate, quarantine and split the ingested labeled file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params
from components.data.files import DataValidationError
from components.stages.base import StageResult, run_stage
from components.stages.chain import snapshot_file
from components.stages.spec import LABELED, resolve


def prepare(params: Params, *, force: bool = False) -> StageResult:
    """Write `paths.prepared` (splits, labels, report, quarantine) from the ingested input.

    Raises:
        DataValidationError: nothing was ingested, or the data fails validation.
    """
    from components.task_types import task_type

    def compute(out: Path) -> dict[str, Any]:
        source = snapshot_file(resolve(LABELED, params))
        if source is None:
            raise DataValidationError(f"{resolve(LABELED, params)} holds no input: run "
                                      "`tuneline ingest` (or `tuneline run`) first")
        return task_type(params.task.type).prepare(source, out, params.data)

    return run_stage("prepare", params, compute, describe, force=force)


def describe(report: dict[str, Any]) -> str:
    bad = sum(report["quarantined"].values())
    near = report.get("near_duplicates") or {}
    text = (f"{report['rows_ok']} of {report['rows_in']} rows kept, splits "
            f"{report['split_sizes']}, quarantined {bad} {report['quarantined'] or ''}".rstrip())
    if near.get("rows"):
        text += (f"; WARNING: {near['rows']} rows have a near-duplicate (Jaccard >= "
                 f"{near['threshold']}) in another split {near['by_splits']}")
    return text
