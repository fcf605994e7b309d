"""Stage `export`: ONNX fp32 + int8 bundle with tokenizer, labels, manifest and parity."""

from __future__ import annotations

from typing import Any

from components.config import Params
from components.stages.base import StageResult, run_stage
from components.stages.chain import shipped_model_dir


def export(params: Params, *, force: bool = False) -> StageResult:
    """Write the bundle to `paths.export`; parity, size and latency are its result."""
    from components.release.bundle import export_bundle

    return run_stage("export", params, lambda out: export_bundle(
        shipped_model_dir(params), params.paths.prepared, out, params), describe, force=force)


def describe(r: dict[str, Any]) -> str:
    entities = (f", int8 finds the fp32 entities in {r['int8_entity_agreement']:.2%} of "
                "sentences" if "int8_entity_agreement" in r else "")
    return (f"int8 {r['size_mb_int8']:.1f} MB ({r['size_ratio']:.2f}x fp32), agreement "
            f"{r['int8_agreement']:.4f} (most confident fp32 prediction flipped: p = "
            f"{r['int8_flip_max_fp32_probability']:.3f}), accuracy fp32 {r['accuracy_fp32']:.4f} / "
            f"int8 {r['accuracy_int8']:.4f}{entities}, batch-1 p50 {r['int8_b1_p50_ms']:.2f} ms")
