"""Tiny TRAINED classifiers and their exported bundles, built once per test session.

An untrained head gives near-equal logits, so int8-vs-fp32 agreement on it is noise; these
models are really fine-tuned (the project's training loop) on the tiny corpus:
    "good"     trained on the true labels: near-perfect on the tiny test split
    "swapped"  trained with weather/finance labels swapped: confident, but only the
               sports rows are right (accuracy about 1/3) on the true test split
"""

from __future__ import annotations

import json
from pathlib import Path

from components.config import Params, load_params

_CACHE: dict[tuple[str, str], dict[str, Path]] = {}
SWAP = {"weather": "finance", "finance": "weather"}


def tiny_overrides(root: Path, backbone: Path) -> list[str]:
    """The shared tiny overrides, trained long enough for a confident head (later wins)."""
    from tests.conftest import tiny_overrides as shared

    return shared(root, backbone) + [
        "model.num_threads=1", "finetune.max_steps=150", "finetune.eval_every=50",
        "finetune.checkpoint_every=50", "finetune.early_stopping.patience=0",
        "export.latency_repeats=20"]


def tiny_test_params(root: Path, backbone: Path, extra: list[str] | None = None) -> Params:
    return load_params(overrides=tiny_overrides(root, backbone) + list(extra or []))


def export_candidates(model: dict[str, Path], out: Path, params: Params,
                      candidates: list[str], calibrate: bool = True) -> dict:
    """Export a trained tiny model with these int8 candidates (calibrated on 64 training
    texts unless not `calibrate`); returns export's result."""
    from components.data.files import load_split
    from components.model.modeling import load_trained
    from components.release.export import export_model

    p = params.model_copy(update={"export": params.export.model_copy(update={
        "int8_candidates": list(candidates), "calibration_texts": 64})})
    trained = load_trained(model["model"])
    texts, y = load_split(model["prepared"], "test")
    train_texts, _ = load_split(model["prepared"], "train")
    return export_model(trained.model, trained.tokenizer, trained.labels, out, p,
                        texts=texts, y_true=y, meta=trained.meta,
                        calibration_texts=train_texts if calibrate else None)


def swap_labels(prepared: Path, out: Path) -> Path:
    """Copy a prepared folder with weather/finance swapped in train and validation."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("labels.json", "test.jsonl"):
        (out / name).write_bytes((prepared / name).read_bytes())
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (prepared / f"{split}.jsonl").open()]
        with open(out / f"{split}.jsonl", "w") as fh:
            for row in rows:
                row["label"] = SWAP.get(row["label"], row["label"])
                fh.write(json.dumps(row) + "\n")
    return out


def shared_prepared(tmp_path_factory) -> Path:
    """The tiny corpus in the prepared layout, written once per session (deterministic)."""
    from tests.conftest import tiny_rows, write_prepared

    if ("prepared", "") not in _CACHE:
        root = tmp_path_factory.mktemp("shared-prepared")
        _CACHE[("prepared", "")] = {"prepared": write_prepared(root / "prepared", tiny_rows())}
    return _CACHE[("prepared", "")]["prepared"]


def trained_bundle(tmp_path_factory, backbone: Path, kind: str) -> dict[str, Path]:
    """{"model", "bundle", "prepared"} for a tiny model of `kind`, trained once per session."""
    from components.release.bundle import export_bundle
    from components.train.finetune import train

    key = (kind, str(backbone))
    if key in _CACHE:
        return _CACHE[key]
    prepared = shared_prepared(tmp_path_factory)
    root = tmp_path_factory.mktemp(f"trained-{kind}")
    params = tiny_test_params(root, backbone)
    train_data = prepared if kind == "good" else swap_labels(prepared, root / "swapped")
    train(params, train_data, root / "model", checkpoint_dir=root / "checkpoints")
    export_bundle(root / "model", prepared, root / "bundle", params)
    _CACHE[key] = {"model": root / "model", "bundle": root / "bundle", "prepared": prepared}
    return _CACHE[key]
