"""`watch-data`: a small scheduled flow that starts a retrain when new data lands.

It hashes the input file (`paths.raw`) and compares it with the `raw_data_hash` lineage
tag (md5 of the exact input bytes) of the model in production. A different hash (or no
champion yet) triggers the `retrain` deployment; the same hash does nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from components.config import load_params
from components.data_io import md5_file
from components.stages.ingest import ensure_demo

RETRAIN_DEPLOYMENT = "retrain/retrain"


def data_changed(params_file: str | None = None, overrides: list[str] | None = None
                 ) -> dict[str, Any]:
    """Compare the input's hash with the champion's lineage tag (no Prefect involved)."""
    from components.registry import CHAMPION, get_alias_version, list_versions

    params = load_params(params_file, overrides)
    current = md5_file(ensure_demo(params))
    champion = get_alias_version(params, CHAMPION)
    trained_on = None
    if champion is not None:
        row = next(r for r in list_versions(params) if r["version"] == champion)
        trained_on = row["tags"].get("raw_data_hash")
    return {"data_hash": current, "champion": champion, "champion_data_hash": trained_on,
            "changed": current != trained_on}


@flow(name="watch-data", description="Start a retrain when the input data changes.")
def watch_data(params_file: str | None = None, overrides: list[str] | None = None,
               deployment: str = RETRAIN_DEPLOYMENT) -> dict[str, Any]:
    from prefect.deployments import run_deployment

    state = data_changed(params_file, overrides)
    logger = get_run_logger()
    if not state["changed"]:
        logger.info("data unchanged (%s = @champion v%s's): nothing to do",
                    state["data_hash"], state["champion"])
        return state
    logger.info("new data %s (champion trained on %s): starting %s", state["data_hash"],
                state["champion_data_hash"], deployment)
    run = run_deployment(deployment, timeout=0,
                         parameters={"params_file": params_file,
                                     "overrides": list(overrides or [])})
    return {**state, "flow_run_id": str(run.id)}
