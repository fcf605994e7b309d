"""What the current chain holds, asked by every stage and driver (stages never import
each other): the input snapshots and their hashes, the backbone fine-tuning starts from,
the texts pretraining reads, the model's MLflow run, which model ships, and the gate's
verdict on it.

Each answer reads a stage's output folder under the current params; a stage's output
that is not current for these params counts as absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params
from components.data.files import DataValidationError, md5_file
from components.io import read_json
from components.stages.base import StaleInputError, stored_result
from components.stages.spec import LABELED, UNLABELED, fingerprint, output_dir, resolve

PRETRAIN_MARKER = "pretrain_metrics.json"  # the pretrain stage's result, also its marker
RUN_FILE = "mlflow_run_id.txt"  # beside the checkpoints: a resumed run logs to the same run


def snapshot_file(folder: Path) -> Path | None:
    """The one file of a snapshot folder, None when it is empty."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file()) if folder.is_dir() else []
    if len(files) > 1:
        raise DataValidationError(f"{folder} should hold one file, holds {len(files)}")
    return files[0] if files else None


def snapshot_versions(params: Params) -> dict[str, Any]:
    """Content hashes of the input snapshots (what MLflow records and restore fetches)."""
    from components.data.files import data_version

    labeled_dir, unlabeled_dir = resolve(LABELED, params), resolve(UNLABELED, params)
    file = snapshot_file(labeled_dir)
    return {"input_version": data_version(labeled_dir) if labeled_dir.is_dir() else None,
            "unlabeled_version": (data_version(unlabeled_dir) if unlabeled_dir.is_dir()
                                  else None),
            "raw_data_hash": md5_file(file) if file else None}



class PretrainMissingError(FileNotFoundError):
    """pretrain.enabled is true but the pretrain stage's output is not there."""


def starting_backbone(params: Params) -> Path | None:
    """The backbone folder fine-tuning starts from: the adapted one, or None (the original
    `model.name_or_path`) when pretraining is off or its guard kept the original.

    Raises:
        PretrainMissingError: pretraining is on but its output is not there.
    """
    if not params.pretrain.enabled:
        return None
    folder = Path(params.paths.pretrained)
    if (folder / "config.json").exists():
        return folder
    marker = folder / PRETRAIN_MARKER
    if marker.exists() and read_json(marker).get("backbone") == "original":
        return None
    raise PretrainMissingError(f"pretrain.enabled is true but {folder} holds no backbone "
                               "(run `tuneline pretrain` first)")


def pretraining_texts(params: Params) -> tuple[list[str], str, int]:
    """(texts, where they came from, how many were dropped): the unlabeled snapshot minus
    any text of the validation or test split, else the train split's texts."""
    from components.data.checks import normalize_text
    from components.data.files import load_texts, load_unlabeled

    unlabeled = snapshot_file(resolve(UNLABELED, params))
    if unlabeled is None:
        return load_texts(params.paths.prepared, "train"), "the prepared train split", 0
    heldout = {normalize_text(t) for split in ("validation", "test")
               for t in load_texts(params.paths.prepared, split)}
    texts = load_unlabeled(unlabeled)
    kept = [t for t in texts if normalize_text(t) not in heldout]
    return kept, str(unlabeled), len(texts) - len(kept)


def run_tags(params: Params, model_fingerprint: str) -> dict[str, str]:
    """Lineage tags of a model's MLflow run (besides `tracking.lineage_tags`)."""
    data = snapshot_versions(params)
    pretrained = pretrain_record(params)
    backbone = "original"
    if pretrained.get("backbone") == "adapted":
        backbone = f"adapted by {pretrained['objective']} pretraining"
    guard = {"pretrain_guard": pretrained["reason"]} if "reason" in pretrained else {}
    return {"model_fingerprint": model_fingerprint, "raw_source": str(params.paths.raw),
            "start_backbone": backbone, **guard,
            **{k: str(v) for k, v in data.items() if v is not None}}


def pretrain_record(params: Params) -> dict[str, Any]:
    """The pretrain stage's result behind the current chain ({} when pretraining is off)."""
    if not params.pretrain.enabled:
        return {}
    return stored_result(Path(params.paths.pretrained), fingerprint("pretrain", params)) or {}


def pretrain_scalars(params: Params) -> dict[str, float]:
    """The pretrain stage's numbers (held-out losses, the guard's probe scores) for the run."""
    result = pretrain_record(params)
    if not result:
        return {}
    out = {k: v for k, v in result.items() if isinstance(v, int | float)
           and not isinstance(v, bool) and k.startswith(("heldout_loss", "train_seconds"))}
    for when in ("before", "after"):
        for key, value in result.get(f"probe_{when}", {}).items():
            if key in ("accuracy", "macro_f1", "loss"):
                out[f"probe_{when}_{key}"] = value
    out["adapted_backbone_kept"] = float(result.get("backbone") == "adapted")
    return out


def model_run_id(params: Params) -> str | None:
    """The MLflow run of the model now in `paths.model` (None when it is not current)."""
    record = stored_result(Path(params.paths.model), fingerprint("finetune", params))
    return None if record is None else record.get("mlflow_run_id")


def shipped_model_dir(params: Params) -> Path:
    """The model folder evaluate and export read: the student when compression is on."""
    return Path(params.paths.compressed if params.compress.enabled else params.paths.model)


def current_verdict(params: Params) -> dict[str, Any]:
    """The gate's verdict on the current bundle against the current @champion.

    Raises:
        StaleInputError: the gate has not judged this bundle, or judged it against a
            champion that has moved since (run `tuneline gate`).
    """
    from components.registry.versions import champion_ref

    champion = champion_ref(params)
    folder = output_dir("gate", params)
    verdict = stored_result(folder, fingerprint("gate", params,
                                                runtime={"champion": champion}))
    if verdict is None:
        against = f"v{champion['version']}" if champion else "no champion"
        raise StaleInputError(f"register: {folder} holds no verdict on this bundle against "
                              f"the current @champion ({against}); run `tuneline gate` "
                              "first (or `tuneline run`)")
    return verdict
