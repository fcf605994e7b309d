"""The `retrain` flow: new data in, a gated model version out.

ingest -> prepare -> version data (DVC) -> [pretrain] -> finetune -> [compress] -> evaluate
-> export -> gate vs @champion -> register. Every step is a stage function of components/stages
run as a task (pipelines/stage_tasks.py); `dvc repro` and the `tuneline` verbs run the same ones.

The parameters are flat and typed so that the Prefect UI's "Custom run" form shows a text
field, dropdowns, a toggle and a number; None means "what params.yaml says", and the
deployment fills the form with those values (pipelines/deployments.py).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from components.config import (
    Params,
    PeftConfig,
    load_params,
    named_overrides,
    strategy_names,
)
from components.evaluate.plots import plot_files
from components.registry.tracking import version_url
from components.registry.versions import is_complete, model_card
from pipelines import stage_tasks
from pipelines.events import emit_model_event
from pipelines.guard import check_deployment_request
from pipelines.limits import RetrainBusy, RetrainSlot, one_retrain_per_model
from pipelines.quiet import quiet_libraries
from pipelines.reporting import publish_artifacts, summarize

StrategyName = Literal[tuple(strategy_names())]  # type: ignore[valid-type]
PeftName = PeftConfig.model_fields["method"].annotation


@flow(name="retrain", description=(
    "Retrain, gate and promote the text classifier: ingest -> prepare -> version data -> "
    "[pretrain] -> finetune -> [compress] -> evaluate -> export -> gate vs @champion -> "
    "register."))
def retrain(
    data_path: str | None = None,
    strategy: StrategyName | None = None,
    peft_method: PeftName | None = None,
    pretrain: bool | None = None,
    max_steps: Annotated[int | None, Field(ge=1)] = None,
    nproc: Annotated[int | None, Field(ge=1)] = None,
    overrides: list[str] | None = None,
    params_file: str | None = None,
) -> Any:
    """Run the whole chain; returns a summary (model version, verdict, what was reused).

    One run per model at a time (pipelines/limits.py): a second one waits, or ends in a
    Skipped state saying why when `schedule.when_busy` is `skip`; a run that lost the
    model's slot fails before its next stage. Each parameter left empty (None) takes its
    value from params.yaml.

    Args:
        data_path: CSV, JSONL or Parquet file with text and label columns (entities:
            JSONL or CoNLL with words and tags), on the machine that runs the flow (a
            relative path starts at the project folder); from a deployment, inside the
            project folder or ui.data_roots. params.yaml: paths.raw.
        strategy: How the weights move: adamw (gradients) or a zeroth-order method that
            needs forward passes only (mezo, zo_sign, es, cem). params.yaml:
            finetune.strategy.
        peft_method: Which weights train: none (all of them), lora, ia3, prompt_tuning or
            prefix_tuning. params.yaml: peft.method.
        pretrain: Domain pretraining (pretrain.objective: masked LM or SimCSE) on unlabeled
            in-domain text before fine-tuning, kept only if a linear probe says it helps.
            params.yaml: pretrain.enabled.
        max_steps: Fine-tuning steps (early stopping may end sooner). params.yaml:
            finetune.max_steps.
        nproc: Fine-tune as this many processes (ranks) under torchrun on the machine that
            runs the flow: data-parallel for adamw, seed-shared for the zeroth-order
            strategies; from a deployment, at most ui.max_nproc. params.yaml: finetune.nproc.
        overrides: More params.yaml values, one key.path=value each, applied last, e.g.
            finetune.adamw.lr=1e-4 or gate.compare=non_inferiority. A run started from a
            deployment may change only the keys in ui.allowed_overrides.
        params_file: The params.yaml to read (empty: the project's); from a deployment,
            one inside the project folder.
    """
    started = time.perf_counter()
    quiet_libraries()
    sets = named_overrides(strategy=strategy, peft_method=peft_method, pretrain=pretrain,
                           max_steps=max_steps, nproc=nproc) + list(overrides or [])
    check_deployment_request(sets, params_file, data_path)
    params = load_params(params_file or None, named_overrides(data_path=data_path) + sets)
    logger = get_run_logger()
    try:
        with one_retrain_per_model(params, logger) as slot:
            result = _run_stages(params, slot)
    except RetrainBusy as busy:
        logger.warning("SKIPPED: %s", busy)
        return Completed(name="Skipped", message=str(busy), data={
            "status": "skipped", "reason": str(busy), "model_name": params.registry.model_name,
            "flow_seconds": time.perf_counter() - started})
    result["flow_seconds"] = time.perf_counter() - started
    if result["status"] == "unchanged":
        return result
    publish_artifacts(result, result.pop("verdict"),
                      card=model_card(params, result["version"]),
                      plots=plot_files(params.paths.eval, params.paths.gate),
                      version_url=version_url(params, result["version"]))
    emit_model_event(params, "promoted" if result["gate_passed"] else "rejected",
                     result["version"], reasons=result["gate_reasons"],
                     moves=result.get("moves", []), by="the gate")
    if not result["gate_passed"]:
        logger.warning("NOT PROMOTED: %s", "; ".join(result["gate_reasons"]))
        if params.gate.fail_run_on_reject:  # a failed run, not a crash: no traceback
            return rejected_state(result)
    return result


def rejected_state(result: dict[str, Any]) -> State:
    """The Failed state of a run whose model the gate rejected (`gate.fail_run_on_reject`);
    it carries the run summary, so callers still report what happened."""
    return Failed(name="Rejected", message="rejected: " + "; ".join(result["gate_reasons"]),
                  data=result)


def outcome(state: State) -> dict[str, Any]:
    """The summary a retrain (or sweep) flow run returned, whatever its final state; the
    error that stopped it otherwise."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


def _run_stages(params: Params, slot: RetrainSlot) -> dict[str, Any]:
    """Every stage as a task, in order; stops after `version` when a version exists."""
    timings: dict[str, float] = {}
    stage_tasks.STAGE_SECONDS.set(timings)

    def step(name: str, task: Any) -> Any:
        slot.check(name)  # a run that lost the slot stops before it writes anything more
        return task(params)

    done = {"ingest": step("ingest", stage_tasks.ingest),
            "prepare": step("prepare", stage_tasks.prepare),
            "version": step("version-data", stage_tasks.version_data)}
    existing = step("find-registered", stage_tasks.find_registered)
    if existing is not None:
        if not is_complete(existing["tags"]):  # finish a registration that stopped half-way
            done["register"] = step("register", stage_tasks.register)
        return {**summarize(params, done, unchanged=existing), "stage_seconds": timings}
    for name in ("pretrain", "finetune", "compress", "evaluate", "export", "gate", "register"):
        done[name] = step(name, getattr(stage_tasks, name))
    return {**summarize(params, done), "stage_seconds": timings,
            "verdict": done["gate"].result}
