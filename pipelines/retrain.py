"""The `retrain` flow: new data in, a gated model version out.

ingest -> prepare -> version data (DVC) -> [pretrain] -> finetune -> evaluate -> export
-> gate vs @champion -> register. Every step is a stage function of components/stages
run as a task (pipelines/tasks.py); `dvc repro` and the `tuneline` verbs run the same ones.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from components.config import load_params, named_overrides, strategy_names
from pipelines import tasks
from pipelines.quiet import quiet_libraries
from pipelines.reporting import publish_artifacts, summarize

StrategyName = Literal[tuple(strategy_names())]  # type: ignore[valid-type]
PeftName = Literal["none", "lora", "ia3", "prompt_tuning", "prefix_tuning"]


@flow(name="retrain", description="Retrain, gate and promote the text classifier.")
def retrain(
    data_path: Annotated[str | None, Field(description=(
        "CSV, JSONL or Parquet with text and label columns. Empty: paths.raw from "
        "params.yaml (the demo corpus by default)."))] = None,
    strategy: Annotated[StrategyName | None, Field(description=(
        "Fine-tuning strategy. Empty: finetune.strategy from params.yaml."))] = None,
    peft_method: Annotated[PeftName | None, Field(description=(
        "PEFT method. Empty: peft.method from params.yaml."))] = None,
    pretrain: Annotated[bool | None, Field(description=(
        "Domain pretraining first. Empty: pretrain.enabled from params.yaml."))] = None,
    max_steps: Annotated[int | None, Field(ge=1, description=(
        "Training steps. Empty: finetune.max_steps from params.yaml."))] = None,
    overrides: Annotated[list[str] | None, Field(description=(
        "More params.yaml overrides, each key.path=value, e.g. finetune.adamw.lr=1e-4."))
    ] = None,
    params_file: Annotated[str | None, Field(description=(
        "params.yaml to read. Empty: the project's."))] = None,
) -> dict[str, Any]:
    """Run the whole chain; returns a summary (model version, verdict, what was reused)."""
    started = time.perf_counter()
    quiet_libraries()
    params = load_params(params_file, named_overrides(
        data_path=data_path, strategy=strategy, peft_method=peft_method, pretrain=pretrain,
        max_steps=max_steps) + list(overrides or []))
    timings: dict[str, float] = {}
    tasks.STAGE_SECONDS.set(timings)
    done = {"ingest": tasks.ingest(params), "prepare": tasks.prepare(params),
            "version": tasks.version_data(params)}
    existing = tasks.find_registered(params)
    if existing is not None:
        return {**summarize(params, done, unchanged=existing), "stage_seconds": timings,
                "flow_seconds": time.perf_counter() - started}
    done["pretrain"] = tasks.pretrain(params)
    done["finetune"] = tasks.finetune(params)
    done["evaluate"] = tasks.evaluate(params)
    done["export"] = tasks.export(params)
    done["gate"] = tasks.gate(params)
    done["register"] = tasks.register(params)
    result = summarize(params, done)
    result.update(stage_seconds=timings, flow_seconds=time.perf_counter() - started)
    publish_artifacts(result, done["gate"].result)
    if not result["gate_passed"]:
        get_run_logger().warning("NOT PROMOTED: %s", "; ".join(result["gate_reasons"]))
        if params.gate.fail_run_on_reject:
            raise GateRejected("; ".join(result["gate_reasons"]))
    return result


class GateRejected(RuntimeError):
    """The challenger failed the gate and params say a rejection fails the run."""
