"""The `sweep` flow: search finetune settings, then send the winner through `retrain`.

ingest -> prepare -> version data -> [pretrain] -> trials on Dask (each one a task run of
the `sweep-trials` subflow, an Optuna trial and a nested MLflow run) -> summary -> the
winner and the baseline re-trained with `sweep.confirm_seeds` seeds on Dask (the
`sweep-confirm` subflow; the higher mean ships) -> the `retrain` flow with the shipped
values (its model reused when a trial made it), so it is evaluated on the test split,
exported, gated against @champion and registered exactly as `tuneline run` would. Trial
logic lives in components/sweep; this module only decides where trials run and how many
run at once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from pydantic import Field

from components import sweep as sweeps
from components.config import Params, load_params, named_overrides
from components.sweep import SweepPlan
from pipelines import stage_tasks
from pipelines.guard import check_deployment_request
from pipelines.quiet import quiet_libraries
from pipelines.retrain import PeftName, StrategyName, outcome, rejected_state, retrain

# Dask's own INFO lines (workers starting and stopping) would drown the trials' lines.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


class NoWinner(RuntimeError):
    """No trial of the study finished, so there is nothing to send through the gate."""


@task(name="trial", cache_policy=NO_CACHE)
def trial(params: Params, plan: SweepPlan, number: int, values: dict[str, Any]) -> Any:
    """One trial on a Dask worker; a pruned or failed trial is recorded, not raised."""
    quiet_libraries()
    record = sweeps.run_trial(params, plan, number, values)
    if record["state"] == "PRUNED":
        return Completed(data=record, name="Pruned", message=record["reason"])
    if record["state"] == "FAIL":
        return Failed(data=record, message=f"trial {record['number']}: {record['reason']}")
    return record


@task(name="confirm", cache_policy=NO_CACHE)
def confirm_run(params: Params, plan: SweepPlan, who: str, seed: int,
                values: dict[str, Any]) -> dict[str, Any]:
    """One confirmation model (winner or baseline, one seed) on a Dask worker."""
    quiet_libraries()
    return sweeps.run_confirmation(params, plan, who, seed, values)


@flow(name="sweep-confirm", description="The sweep's winner and baseline over several seeds.")
def sweep_confirm(params: Params, plan: SweepPlan, runs: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    futures = [confirm_run.with_options(task_run_name=f"confirm-{r['who']}-seed{r['seed']}")
               .submit(params, plan, r["who"], r["seed"], r["values"]) for r in runs]
    return [f.result() for f in futures]


open_sweep = stage_tasks.stage_task(sweeps.open_sweep, "open-sweep", io=True)
summarize = stage_tasks.stage_task(sweeps.summarize, "summarize-sweep", io=True)
place_winner = stage_tasks.stage_task(sweeps.place_winner, "place-winner")


@flow(name="sweep-trials", description="Trials of one sweep study, fanned out on Dask.")
def sweep_trials(params: Params, plan: SweepPlan) -> str:
    """Keep `sweep.workers` trials running until the trials or the budget run out; returns
    why it stopped."""
    queue = sweeps.TrialQueue(params, plan)
    started, launched, pending = time.monotonic(), 0, set()
    stopped = sweeps.stop_reason(params, plan, launched, started)
    while stopped is None or pending:
        while stopped is None and len(pending) < params.sweep.workers:
            number, values = queue.next()
            pending.add(trial.with_options(task_run_name=f"trial-{number}").submit(
                params, plan, number, values))
            launched += 1
            stopped = sweeps.stop_reason(params, plan, launched, started)
        if not pending:
            break
        pending.discard(next(as_completed(list(pending))))
        stopped = stopped or sweeps.stop_reason(params, plan, launched, started)
    return stopped or "nothing left to run"


def dask_runner(params: Params) -> Any:
    """An existing cluster at `sweep.dask_address`, else a local one: `sweep.workers`
    processes running one trial each (torch gets `sweep.threads_per_worker` threads)."""
    from prefect_dask import DaskTaskRunner

    if params.sweep.dask_address:
        return DaskTaskRunner(address=params.sweep.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": params.sweep.workers,
                                          "threads_per_worker": 1, "processes": True})


@contextlib.contextmanager
def api_for_workers() -> Iterator[None]:
    """Trial task runs report to this flow's Prefect API even when it is the temporary
    local server (a worker would otherwise start a server of its own)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


@flow(name="sweep", description="Search finetune settings; gate and register the best.")
def sweep(
    data_path: str | None = None,
    strategy: StrategyName | None = None,
    peft_method: PeftName | None = None,
    pretrain: bool | None = None,
    max_steps: Annotated[int | None, Field(ge=1)] = None,
    n_trials: Annotated[int | None, Field(ge=1)] = None,
    dask_address: str | None = None,
    overrides: list[str] | None = None,
    params_file: str | None = None,
) -> dict[str, Any] | State:
    """Run the sweep, then `retrain` with the winner's values; returns both summaries.

    Each parameter left empty (None) takes its value from params.yaml. The Prefect UI's
    form shows these descriptions (a description in the annotation would not reach it).

    Args:
        data_path: CSV, JSONL or Parquet file with text and label columns, on the machine
            that runs the flow; from a deployment, inside the project folder or
            ui.data_roots. params.yaml: paths.raw.
        strategy: Fine-tuning strategy of every trial unless sweep.space searches it.
            params.yaml: finetune.strategy.
        peft_method: Which weights train, unless sweep.space searches it. params.yaml:
            peft.method.
        pretrain: Domain pretraining once before the trials. params.yaml: pretrain.enabled.
        max_steps: Training steps of a trial when sweep.space does not search them.
            params.yaml: finetune.max_steps.
        n_trials: Trials in the study, counting earlier runs of it. params.yaml:
            sweep.n_trials.
        dask_address: Scheduler of an existing Dask cluster (tcp://host:8786); empty: a
            local cluster of sweep.workers processes. params.yaml: sweep.dask_address.
        overrides: More params.yaml values, one key.path=value each, applied last, e.g.
            sweep.budget.cpu_seconds=3600. A run started from a deployment may change
            only the keys in ui.allowed_overrides.
        params_file: The params.yaml to read (empty: the project's); from a deployment,
            one inside the project folder.
    """
    quiet_libraries()
    named = {"data_path": data_path, "strategy": strategy, "peft_method": peft_method,
             "pretrain": pretrain, "max_steps": max_steps}
    sets = named_overrides(**{**named, "data_path": None}, n_trials=n_trials,
                           dask_address=dask_address) + list(overrides or [])
    check_deployment_request(sets, params_file, data_path)
    params = load_params(params_file, named_overrides(data_path=data_path) + sets)
    for stage in (stage_tasks.ingest, stage_tasks.prepare, stage_tasks.version_data,
                  stage_tasks.pretrain):
        stage(params)
    plan = open_sweep(params)
    with api_for_workers():
        stopped = sweep_trials.with_options(task_runner=dask_runner(params))(
            sweeps.for_workers(params), plan)
    found = summarize(params, plan, stopped)
    publish(found)
    if found["best"] is None:
        raise NoWinner(f"no trial of study {plan.study} finished: see {found['folder']}")
    shipped, verdict = found["best"], None
    runs = sweeps.confirm_plan(params, found["best"])
    if runs:
        with api_for_workers():
            confirmed = sweep_confirm.with_options(task_runner=dask_runner(params))(
                sweeps.for_workers(params), plan, runs)
        verdict = sweeps.judge(params, plan, confirmed)
        get_run_logger().info("sweep %s: %s", found["study"], verdict["text"])
        if verdict["ships"] == "baseline":
            shipped = {**found["best"], "params": sweeps.current_values(params)}
    placed = place_winner(params, plan, shipped)
    ships = sweeps.as_overrides(shipped["params"])
    result = outcome(retrain(**named, overrides=list(overrides or []) + ships,
                             params_file=params_file, return_state=True))
    nest_winner(params, plan, result, placed)
    summary = {**result, "sweep": {k: v for k, v in found.items() if k != "trials"}
               | {"winner_model_reused": placed, "trials": sweeps.table(found["trials"]),
                  "confirmation": verdict, "shipped_overrides": ships}}
    if summary.get("gate_passed") is False and params.gate.fail_run_on_reject:
        return rejected_state(summary)
    return summary


def publish(found: dict[str, Any]) -> None:
    """The trial table and the sweep's summary as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from components.sweep.summary import render_markdown

    create_table_artifact(sweeps.table(found["trials"]), key="sweep-trials",
                          description=f"Trials of study {found['study']}")
    create_markdown_artifact(render_markdown(found) + f"\nPlot and files: {found['folder']}"
                             f" (also in MLflow run {found['parent_run_id']}, folder sweep/)",
                             key="sweep-summary", description="Best values, trial table")
    get_run_logger().info("sweep %s: best %s (stopped: %s)", found["study"],
                          " ".join(found["best_overrides"]) or "none", found["stopped"])


def nest_winner(params: Params, plan: SweepPlan, result: dict[str, Any], placed: bool) -> None:
    """The registered model's run under the sweep's run, and the sweep's run ended."""
    from components.registry import tracking

    client = tracking.get_client(params)
    retrained = result.get("status") not in ("unchanged", "skipped") and not placed
    if retrained and result.get("run_id"):  # retrained outside the trials
        client.set_tag(result["run_id"], "mlflow.parentRunId", plan.parent_run_id)
    client.set_tag(plan.parent_run_id, "sweep_winner_version", str(result.get("version")))
    client.set_tag(plan.parent_run_id, "sweep_winner_status", str(result.get("status")))
    tracking.end_run(params, plan.parent_run_id)
