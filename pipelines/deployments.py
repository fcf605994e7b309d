"""Deployments of the flows, as the Prefect UI shows them.

- `retrain`: on the cron schedule, on the `tuneline.data.changed` trigger
  (pipelines/events.py), and from the UI's Custom run form;
- `watch-data`: on an interval, announces new input data;
- `promote` and `rollback`: run from the UI when a person decides;
- `sweep`: run from the UI, searches finetune settings and sends the winner through
  `retrain`.

The retrain and sweep forms are the flow's parameter schema made plain: a parameter that
may be None ("what params.yaml says") is shown as its own type, filled with the value
params.yaml gives it at deploy time, so the form shows a dropdown set to `adamw` rather
than a `str | None` toggle, and the server checks every run against that schema
(`enforce_parameter_schema`).

`serve_deployments` registers them with the Prefect server (PREFECT_API_URL) and executes
their runs in this process; `deploy_to_pool` registers them on a work pool instead. Either
way the runs learn the params file and overrides the deployments were made with (in their
environment), and check a request from the form or an event against them
(components/remote_runs.py): the form's values are not trusted with the runner's rights.
prefect.yaml describes the same deployments for `prefect deploy --all`
(tests/test_prefect_yaml.py keeps the two equal).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
from pathlib import Path
from typing import Any

from components.config import DEFAULT_PARAMS, PROJECT_ROOT, Params
from components.remote_runs import deployed_with
from pipelines.events import data_changed_trigger
from pipelines.promote import promote, rollback
from pipelines.retrain import retrain
from pipelines.sensor import watch_data
from pipelines.sweep import sweep

TAGS = ("tuneline",)


def retrain_form_defaults(params: Params, params_file: Path | None,
                          overrides: list[str] | None) -> dict[str, Any]:
    """The retrain form's initial values: what params.yaml (+ deploy overrides) says."""
    return {"data_path": str(params.paths.raw), "strategy": params.finetune.strategy,
            "peft_method": params.peft.method, "pretrain": params.pretrain.enabled,
            # auto (from the train size) shows as empty: the form's None means params.yaml
            "max_steps": (params.finetune.max_steps
                          if isinstance(params.finetune.max_steps, int) else None),
            "nproc": params.finetune.nproc,
            "overrides": list(overrides or []),
            "params_file": _params_path(params_file)}


def sweep_form_defaults(params: Params, params_file: Path | None,
                        overrides: list[str] | None) -> dict[str, Any]:
    """The sweep form's initial values: the retrain form's (less `nproc`: trials run one
    process each) and the study's size and cluster; an empty address is a local cluster."""
    named = retrain_form_defaults(params, params_file, overrides)
    del named["nproc"]
    return {**named, "n_trials": params.sweep.n_trials,
            "dask_address": params.sweep.dask_address or ""}


def form_schema(schema: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each `T | None` property shown as plain T, defaulting to `defaults`.

    Descriptions are joined onto one line (the UI shows the docstring's line breaks).
    """
    out = copy.deepcopy(schema)
    for name, prop in out["properties"].items():
        options = prop.get("anyOf", [])
        typed = [o for o in options if o != {"type": "null"}]
        if len(options) == 2 and len(typed) == 1:
            del prop["anyOf"]
            prop.update(typed[0])
        if name in defaults:
            prop["default"] = defaults[name]
        if prop.get("description"):
            prop["description"] = re.sub(r"\s+", " ", prop["description"]).strip()
    return out


def deployment_specs(params: Params, params_file: Path | None = None,
                     overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Name, entrypoint, schedule, triggers and default parameters of each deployment."""
    from prefect.schedules import Cron, Interval

    plain = {"params_file": _params_path(params_file)}
    watch = {**plain, "overrides": list(overrides or [])}
    return [
        {"flow": retrain, "entrypoint": "pipelines/retrain.py:retrain", "name": "retrain",
         "schedules": [Cron(params.schedule.cron, timezone=params.schedule.timezone)],
         "triggers": [data_changed_trigger(params)],
         "parameters": retrain_form_defaults(params, params_file, overrides),
         "description": "Retrain, gate and promote. Runs on the schedule, when new data is "
                        "announced (tuneline.data.changed), and from Custom run."},
        {"flow": watch_data, "entrypoint": "pipelines/sensor.py:watch_data",
         "name": "watch-data", "schedules": [Interval(params.schedule.sensor_interval_s)],
         "parameters": watch,
         "description": "Announce new data (tuneline.data.changed) when the input's hash "
                        "differs from the champion's."},
        {"flow": promote, "entrypoint": "pipelines/promote.py:promote", "name": "promote",
         "parameters": plain,
         "description": "Make a version the @champion by hand: Custom run, enter the "
                        "version and why."},
        {"flow": rollback, "entrypoint": "pipelines/promote.py:rollback", "name": "rollback",
         "parameters": plain,
         "description": "Make the @previous version the @champion again: Custom run, say why."},
        {"flow": sweep, "entrypoint": "pipelines/sweep.py:sweep", "name": "sweep",
         "parameters": sweep_form_defaults(params, params_file, overrides),
         "description": "Search finetune settings (sweep.space) with Optuna trials on Dask, "
                        "then retrain, gate and register the winner: Custom run."},
    ]


def _to_deployment(flow: Any, spec: dict[str, Any],
                   job_variables: dict[str, Any] | None = None) -> Any:
    return flow.to_deployment(
        name=spec["name"], schedules=spec.get("schedules"), triggers=spec.get("triggers"),
        parameters=spec["parameters"], tags=list(TAGS), description=spec["description"],
        enforce_parameter_schema=True, job_variables=job_variables)


def build_deployments(params: Params, params_file: Path | None = None,
                      overrides: list[str] | None = None) -> list[Any]:
    return [_to_deployment(spec["flow"], spec)
            for spec in deployment_specs(params, params_file, overrides)]


def run_form(spec: dict[str, Any]) -> dict[str, Any]:
    """A deployment's Custom run form (its parameter schema): the schema Prefect itself
    would register, read from the flow's signature and docstring by `parameter_schema`,
    made plain and filled with the spec's parameters by `form_schema`."""
    from prefect.utilities.callables import parameter_schema

    return form_schema(parameter_schema(spec["flow"]).model_dump(), spec["parameters"])


def run_forms(params: Params, params_file: Path | None = None,
              overrides: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each deployment's form, by deployment name."""
    return {spec["name"]: run_form(spec)
            for spec in deployment_specs(params, params_file, overrides)}


def publish_forms(forms: dict[Any, dict[str, Any]]) -> None:
    """Set each registered deployment's parameter schema (by id) to its form.

    Registering a deployment stores its flow's own schema, and no public argument of
    `to_deployment` or `deploy` takes another one; the API's deployment update does. The
    server then checks every run against the form (`enforce_parameter_schema`).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    with get_client(sync_client=True) as client:
        for deployment_id, form in forms.items():
            client.update_deployment(deployment_id,
                                     DeploymentUpdate(parameter_openapi_schema=form))


def deploy_to_pool(params: Params, pool: str, params_file: Path | None = None,
                   overrides: list[str] | None = None) -> list[str]:
    """Register the deployments on a work pool; `prefect worker start --pool POOL` runs them.

    The flows are loaded from this project folder, so a process worker on this machine
    (or on any machine with the project at the same path) can execute them.
    """
    from prefect import Flow, deploy

    from pipelines.events import ensure_notifications

    record = {"env": deployed_with(_params_path(params_file), overrides)}
    specs = deployment_specs(params, params_file, overrides)
    deployments = [
        _to_deployment(Flow.from_source(source=str(PROJECT_ROOT), entrypoint=spec["entrypoint"]),
                       spec, record)
        for spec in specs]
    ids = deploy(*deployments, work_pool_name=pool, build=False, push=False,
                 print_next_steps_message=False)
    if len(ids) != len(deployments):  # `deploy` reports a failed one in its table only
        raise RuntimeError(f"{len(deployments) - len(ids)} of {len(deployments)} deployments "
                           "were not registered (see the table above)")
    publish_forms({i: run_form(spec) for spec, i in zip(specs, ids, strict=True)})
    ensure_notifications(params)
    return [str(i) for i in ids]


def serve_deployments(params: Params, params_file: Path | None = None,
                      overrides: list[str] | None = None, limit: int = 1) -> None:
    """Register the deployments and run their flow runs here until interrupted.

    What `prefect.serve` does, with the forms published between registering the
    deployments and starting to run them.
    """
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from pipelines.events import ensure_notifications

    runner = Runner(limit=limit)
    specs = deployment_specs(params, params_file, overrides)
    publish_forms({runner.add_deployment(_to_deployment(spec["flow"], spec)): run_form(spec)
                   for spec in specs})
    ensure_notifications(params)
    os.environ.update(deployed_with(_params_path(params_file), overrides))  # runs inherit it
    print(f"serving deployments {', '.join(s['name'] for s in specs)}; Ctrl-C stops",
          flush=True)
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())


def _params_path(params_file: Path | None) -> str:
    return str(Path(params_file).resolve() if params_file else DEFAULT_PARAMS)
