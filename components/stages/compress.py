"""Stage `compress`: distil the fine-tuned model into a student with fewer layers, or
write a marker when `compress.enabled` is off (evaluate and export then take the teacher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params
from components.io import atomic_write_json
from components.stages.base import StageResult, run_stage

MARKER = "compress.json"



def compress(params: Params, *, force: bool = False) -> StageResult:
    """Write the distilled student to `paths.compressed` (its numbers go to the model's run)."""

    def compute(out: Path) -> dict[str, Any]:
        if not params.compress.enabled:
            atomic_write_json(out / MARKER, {"enabled": False})
            return {"enabled": False}
        from components.registry import tracking
        from components.stages.chain import model_run_id, pretraining_texts
        from components.train.distill import distill

        unlabeled, source, _ = pretraining_texts(params)  # minus validation/test texts
        unlabeled = [] if source == "the prepared train split" else unlabeled
        run_id = model_run_id(params)
        mlflow = tracking.MlflowLogger(params, run_id) if run_id else None
        result = distill(params, params.paths.model, params.paths.prepared, out, unlabeled,
                         checkpoint_dir=Path(params.paths.checkpoints) / "compress",
                         logger=(lambda m, step: mlflow({f"compress/{k}": v
                                                         for k, v in m.items()}, step))
                         if mlflow else None)
        from components.data.files import load_texts
        from components.train.distill import speed_vs_teacher

        texts = load_texts(params.paths.prepared, "validation")[:128]
        if texts:
            result.update(speed_vs_teacher(out, params.paths.model, texts,
                                           params.evaluate.batch_size))
        teacher_val = result.get("teacher_val_accuracy")
        if isinstance(teacher_val, float) and isinstance(result.get("val_accuracy"), float):
            result["val_accuracy_vs_teacher"] = result["val_accuracy"] - teacher_val
        if run_id:
            tracking.log_stage(params, run_id, "compress", result)
        return {"enabled": True, **result}

    return run_stage("compress", params, compute, describe, force=force)


def describe(r: dict[str, Any]) -> str:
    if not r.get("enabled"):
        return "off (compress.enabled: false); the fine-tuned model ships"
    versus = (f" ({r['val_accuracy_vs_teacher']:+.4f} vs the teacher)"
              if "val_accuracy_vs_teacher" in r else "")
    speed = (f", {r['speedup_vs_teacher']:.2f}x the teacher's texts/s"
             if "speedup_vs_teacher" in r else "")
    return (f"student with layers {r['keep_layers']} of {r['teacher_layers']} "
            f"({r['total_params'] / 1e6:.1f}M of {r['teacher_params'] / 1e6:.1f}M parameters): "
            f"validation accuracy {r.get('val_accuracy', float('nan')):.4f}{versus} after "
            f"{r['steps']} steps{speed}")
