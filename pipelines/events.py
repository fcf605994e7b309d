"""`tuneline.data.changed`: new data announced to Prefect, and the trigger that retrains on it.

Whoever hands the system a new file (`tuneline data ingest FILE --notify`, or the
`watch-data` flow when the input's hash differs from the champion's) emits one event
carrying the file and the md5 of its bytes. The `retrain` deployment has a deployment
trigger on that event that passes the file as `data_path`. The trigger is evaluated
separately for each hash, and fires once per `schedule.dedupe_s` window: the same bytes
announced twice within it start one run; different bytes start one run each (which then
wait for each other, see pipelines/limits.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from components.config import Params

DATA_CHANGED = "tuneline.data.changed"
RESOURCE_PREFIX = "tuneline.data."


def data_changed_event(file: str | Path, md5: str, source: str) -> dict[str, Any]:
    """The event's fields: the resource is the content (its md5), the payload names the file."""
    file = str(Path(file).resolve())
    return {"event": DATA_CHANGED,
            "resource": {"prefect.resource.id": f"{RESOURCE_PREFIX}{md5}",
                         "prefect.resource.name": Path(file).name,
                         "tuneline.data.md5": md5, "tuneline.data.file": file},
            "payload": {"file": file, "md5": md5, "source": source}}


def emit_data_changed(file: str | Path, md5: str, source: str, *, flush: bool = False) -> str:
    """Send `tuneline.data.changed` to the Prefect API; returns the event's id.

    Args:
        flush: wait until the event has left this process (a command about to exit);
            inside a flow run the engine does that when the run ends.

    Raises:
        RuntimeError: the event could not be sent.
    """
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    event = emit_event(**data_changed_event(file, md5, source))
    if event is None:
        raise RuntimeError(f"{DATA_CHANGED} was not sent (see the Prefect log above)")
    if flush:
        # The worker logs a "still processing" warning for the event it is sending.
        logging.getLogger(EventsWorker.__name__).setLevel(logging.ERROR)
        EventsWorker.drain_all(timeout=30, at_exit=False)
    return str(event.id)


def data_changed_trigger(params: Params) -> Any:
    """The `retrain` deployment's trigger: one run per new hash per `schedule.dedupe_s`."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="retrain on new data",
        description=f"{DATA_CHANGED}: retrain on the announced file, once per hash "
                    f"within {params.schedule.dedupe_s} s",
        expect={DATA_CHANGED},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        for_each={"prefect.resource.id"},
        posture="Reactive",
        threshold=1,
        within=timedelta(seconds=params.schedule.dedupe_s),
        parameters={"data_path": "{{ event.payload.file }}"},
    )
