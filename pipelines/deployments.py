"""Deployments of the flows: `retrain` on a cron schedule, `watch-data` on an interval.

`serve_deployments` registers both with the Prefect server (PREFECT_API_URL) and executes
their runs in this process: scheduled ones, sensor-triggered ones, and any started from
the UI with a custom parameter form. deploy/prefect.yaml describes the same deployments
for a work pool (`prefect deploy --all`) when a team outgrows one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params
from pipelines.retrain import retrain
from pipelines.sensor import watch_data


def build_deployments(params: Params, params_file: Path | None = None,
                      overrides: list[str] | None = None) -> list[Any]:
    from prefect.schedules import Cron, Interval

    defaults = {"params_file": str(params_file) if params_file else None,
                "overrides": list(overrides or [])}
    return [
        retrain.to_deployment(
            name="retrain", schedule=Cron(params.schedule.cron,
                                          timezone=params.schedule.timezone),
            parameters={"config": defaults}, tags=["tuneline"],
            description="Retrain, gate and promote; also run on demand from the UI."),
        watch_data.to_deployment(
            name="watch-data", schedule=Interval(params.schedule.sensor_interval_s),
            parameters=defaults, tags=["tuneline"],
            description="Start retrain when the input data's hash differs from the champion's."),
    ]


def serve_deployments(params: Params, params_file: Path | None = None,
                      overrides: list[str] | None = None, limit: int = 1) -> None:
    """Register the deployments and run their flow runs here until interrupted."""
    from prefect import serve

    serve(*build_deployments(params, params_file, overrides), limit=limit)
