"""`watch-data`: a small scheduled flow that announces new data.

It hashes the input file (`paths.raw`) and compares it with the `raw_data_hash` lineage
tag (md5 of the exact input bytes) of the model in production. A different hash (or no
champion yet) is announced as a `tuneline.data.changed` event, the same one
`tuneline data ingest FILE --notify` emits; the `retrain` deployment's trigger on that event
starts the run (pipelines/events.py), at most once per hash per `schedule.dedupe_s`.
The same hash as the champion's does nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from components.config import load_params
from components.data.files import md5_file
from components.stages.ingest import ensure_demo
from pipelines.guard import check_deployment_request


def data_changed(params_file: str | None = None, overrides: list[str] | None = None
                 ) -> dict[str, Any]:
    """Compare the input's hash with the champion's lineage tag (no Prefect involved)."""
    from components.registry.versions import CHAMPION, get_alias_version, list_versions

    params = load_params(params_file, overrides)
    raw = ensure_demo(params)
    current = md5_file(raw)
    champion = get_alias_version(params, CHAMPION)
    trained_on = None
    if champion is not None:
        row = next(r for r in list_versions(params) if r["version"] == champion)
        trained_on = row["tags"].get("raw_data_hash")
    return {"file": str(raw.resolve()), "data_hash": current, "champion": champion,
            "champion_data_hash": trained_on, "changed": current != trained_on}


@flow(name="watch-data", description="Announce new input data (tuneline.data.changed).")
def watch_data(params_file: str | None = None, overrides: list[str] | None = None
               ) -> dict[str, Any]:
    from pipelines.events import emit_data_changed

    check_deployment_request(overrides, params_file)
    state = data_changed(params_file or None, overrides)
    logger = get_run_logger()
    if not state["changed"]:
        logger.info("data unchanged (%s = @champion v%s's): nothing to do",
                    state["data_hash"], state["champion"])
        return state
    event_id = emit_data_changed(state["file"], state["data_hash"], source="watch-data")
    logger.info("new data %s in %s (champion trained on %s): announced as event %s",
                state["data_hash"], state["file"], state["champion_data_hash"], event_id)
    return {**state, "event_id": event_id}
