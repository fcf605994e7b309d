"""The `retrain` flow: new data in, a gated model version out.

prepare -> version data (DVC) -> [pretrain MLM] -> finetune -> evaluate -> export ONNX
-> gate vs @champion -> register + move aliases. Every step is a component function
wrapped by a task in pipelines/tasks.py; dvc.yaml runs the same functions without Prefect.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from components.config import Params, load_params
from components.lineage import code_version
from pipelines import tasks
from pipelines.quiet import quiet_libraries
from pipelines.reporting import publish_artifacts, summarize


class RetrainConfig(BaseModel):
    """What a person can choose when starting a retrain (rendered as a form in the UI)."""

    model_config = ConfigDict(extra="forbid")

    data_path: str | None = Field(
        None, description="CSV, JSONL or Parquet with text and label columns. "
                          "Empty: paths.raw from params.yaml (the demo corpus by default).")
    strategy: Literal["adamw", "mezo", "zo_sign", "es"] | None = Field(
        None, description="Fine-tuning strategy. Empty: finetune.strategy from params.yaml.")
    peft_method: Literal["none", "lora", "ia3", "prompt_tuning", "prefix_tuning"] | None = (
        Field(None, description="PEFT method. Empty: peft.method from params.yaml."))
    pretrain: bool | None = Field(
        None, description="Run masked-LM domain pretraining first. Empty: pretrain.enabled.")
    overrides: list[str] = Field(
        default_factory=list, description="More params.yaml overrides, each key.path=value, "
                                          "e.g. finetune.max_steps=200.")
    params_file: str | None = Field(None, description="params.yaml to read. Empty: the "
                                                      "project's.")

    def resolve(self) -> Params:
        """params.yaml + the overrides this config implies, validated."""
        sets = list(self.overrides)
        if self.strategy is not None:
            sets.append(f"finetune.strategy={self.strategy}")
        if self.peft_method is not None:
            sets.append(f"peft.method={self.peft_method}")
        if self.pretrain is not None:
            sets.append(f"pretrain.enabled={str(self.pretrain).lower()}")
        return load_params(self.params_file, sets)


@flow(name="retrain", description="Retrain, gate and promote the text classifier.")
def retrain(config: RetrainConfig | None = None) -> dict[str, Any]:
    """Run the whole chain; returns a summary (model version, verdict, what was skipped)."""
    started = time.perf_counter()
    quiet_libraries()
    config = config or RetrainConfig()
    params, code = config.resolve(), code_version()
    timings: dict[str, float] = {}
    tasks.STAGE_SECONDS.set(timings)
    tasks.prepare_data(params, config.data_path)
    data = tasks.version_data(params, config.data_path)
    init = tasks.pretrain_backbone(params, code) if params.pretrain.enabled else None
    model_fp = tasks.finetune_fingerprint(params, data["data_hash"], code, init)
    existing = tasks.find_registered(params, model_fp)
    if existing is not None:
        return {**summarize(params, unchanged=existing), "stage_seconds": timings,
                "flow_seconds": time.perf_counter() - started}
    run_id = tasks.start_tracking(params, data, model_fp, code)
    with tasks.tracked(params, run_id):
        trained = tasks.finetune_model(params, model_fp, init, run_id)
        evaluation = tasks.evaluate_model(params, model_fp, run_id)
        parity = tasks.export_model(params, model_fp, run_id)
        verdict = tasks.gate_model(params)
        published = tasks.publish_model(params, run_id, verdict)
    result = summarize(params, run_id=run_id, trained=trained, evaluation=evaluation,
                       parity=parity, verdict=verdict, published=published, data=data)
    result.update(stage_seconds=timings, flow_seconds=time.perf_counter() - started)
    publish_artifacts(result, verdict)
    if not verdict["passed"]:
        get_run_logger().warning("NOT PROMOTED: %s", "; ".join(verdict["reasons"]))
        if params.gate.fail_run_on_reject:
            raise GateRejected("; ".join(verdict["reasons"]))
    return result


class GateRejected(RuntimeError):
    """The challenger failed the gate and params say a rejection fails the run."""
