"""Deployments of the flows: `retrain` on a cron schedule, `watch-data` on an interval.

`serve_deployments` registers both with the Prefect server (PREFECT_API_URL) and executes
their runs in this process: scheduled ones, sensor-triggered ones, and any started from
the UI with a custom parameter form. The same deployments can be registered
on a work pool (`deploy_to_pool`) when a team outgrows one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import PROJECT_ROOT, Params
from pipelines.retrain import retrain
from pipelines.sensor import watch_data


def deployment_specs(params: Params, params_file: Path | None = None,
                     overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Name, entrypoint, schedule and default parameters of each deployment."""
    from prefect.schedules import Cron, Interval

    defaults = {"params_file": str(Path(params_file).resolve()) if params_file else None,
                "overrides": list(overrides or [])}
    return [
        {"flow": retrain, "entrypoint": "pipelines/retrain.py:retrain", "name": "retrain",
         "schedule": Cron(params.schedule.cron, timezone=params.schedule.timezone),
         "parameters": defaults,
         "description": "Retrain, gate and promote; also run on demand from the UI."},
        {"flow": watch_data, "entrypoint": "pipelines/sensor.py:watch_data",
         "name": "watch-data", "schedule": Interval(params.schedule.sensor_interval_s),
         "parameters": defaults,
         "description": "Start retrain when the input data's hash differs from the champion's."},
    ]


def build_deployments(params: Params, params_file: Path | None = None,
                      overrides: list[str] | None = None) -> list[Any]:
    return [spec["flow"].to_deployment(name=spec["name"], schedule=spec["schedule"],
                                       parameters=spec["parameters"], tags=["tuneline"],
                                       description=spec["description"])
            for spec in deployment_specs(params, params_file, overrides)]


def deploy_to_pool(params: Params, pool: str, params_file: Path | None = None,
                   overrides: list[str] | None = None) -> list[str]:
    """Register the deployments on a work pool; `prefect worker start --pool POOL` runs them.

    The flows are loaded from this project folder, so a process worker on this machine
    (or on any machine with the project at the same path) can execute them.
    """
    from prefect import Flow

    ids = []
    for spec in deployment_specs(params, params_file, overrides):
        flow = Flow.from_source(source=str(PROJECT_ROOT), entrypoint=spec["entrypoint"])
        ids.append(str(flow.deploy(name=spec["name"], work_pool_name=pool,
                                   schedule=spec["schedule"], parameters=spec["parameters"],
                                   tags=["tuneline"], description=spec["description"],
                                   print_next_steps=False)))
    return ids


def serve_deployments(params: Params, params_file: Path | None = None,
                      overrides: list[str] | None = None, limit: int = 1) -> None:
    """Register the deployments and run their flow runs here until interrupted."""
    from prefect import serve

    serve(*build_deployments(params, params_file, overrides), limit=limit)
