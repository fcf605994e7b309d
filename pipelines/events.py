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

import asyncio
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
        flush: send it now, over a connection of its own, and return once it has left
            this process (a command about to exit); otherwise it is queued to Prefect's
            events worker, which a flow run's engine drains when the run ends.

    Raises:
        RuntimeError: the event could not be sent.
    """
    from prefect.events import Event, emit_event

    fields = data_changed_event(file, md5, source)
    if flush:
        return str(send_event(Event(**fields)).id)
    event = emit_event(**fields)
    if event is None:
        raise RuntimeError(f"{DATA_CHANGED} was not sent (see the Prefect log above)")
    return str(event.id)


def send_event(event: Any) -> Any:
    """Send one event and return it once sent; for a process with no flow run to drain
    Prefect's background events worker before it exits.

    The events client sends over a websocket as `emit` is awaited, and leaving its context
    closes the socket with a handshake the server answers after reading what came
    before it, so the event has reached the server when this returns.

    Raises:
        RuntimeError: the event could not be sent.
    """
    from prefect.events import get_events_client

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    try:
        asyncio.run(send())
    except Exception as exc:  # the client's own errors: refused, timed out, no API URL
        raise RuntimeError(f"{event.event} was not sent: {exc}") from exc
    return event


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


# ---------------------------------------------------------------------------- model outcomes

MODEL_EVENT_PREFIX = "tuneline.model."
MODEL_OUTCOMES = ("promoted", "rejected", "rolled-back")
NOTIFY_BLOCK = "tuneline-notify"


def model_event(params: Params, outcome: str, version: str, *, reasons: list[str] | None = None,
                by: str = "", moves: list[str] | None = None) -> dict[str, Any]:
    """The fields of `tuneline.model.<outcome>`: the resource is the registered model."""
    if outcome not in MODEL_OUTCOMES:
        raise ValueError(f"unknown model outcome {outcome!r}; one of {MODEL_OUTCOMES}")
    name = params.registry.model_name
    return {"event": MODEL_EVENT_PREFIX + outcome,
            "resource": {"prefect.resource.id": f"{MODEL_EVENT_PREFIX}{name}",
                         "prefect.resource.name": name, "tuneline.model.version": str(version)},
            "payload": {"model": name, "version": str(version), "reasons": list(reasons or []),
                        "moves": list(moves or []), "by": by}}


def emit_model_event(params: Params, outcome: str, version: str, **detail: Any) -> None:
    """Announce a promotion, rejection or rollback to the Prefect API (a notification, an
    automation or a dashboard can react); a failure to send is logged, never raised: the
    registry already holds the outcome."""
    try:
        from prefect.events import emit_event

        if emit_event(**model_event(params, outcome, version, **detail)) is None:
            raise RuntimeError("the events client is not running")
    except Exception as exc:  # noqa: BLE001 — see the docstring
        logging.getLogger("tuneline.events").warning(
            "%s%s v%s was not announced: %s", MODEL_EVENT_PREFIX, outcome, version, exc)


def notification_automations(params: Params, block_id: Any) -> list[Any]:
    """The automations `tuneline deploy` keeps: one per `notify.events` entry, each sending
    the notification block (a webhook POST) when it happens."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger

    out = []
    for what in params.notify.events:
        if what == "retrain-failed":
            # By state type: the event's name is the state's (a rejection is "Rejected").
            trigger = EventTrigger(
                expect={"prefect.flow-run.*"},
                match={"prefect.resource.id": "prefect.flow-run.*",
                       "prefect.state-type": ["FAILED", "CRASHED"]},
                match_related={"prefect.resource.role": "flow",
                               "prefect.resource.name": "retrain"},
                posture="Reactive", threshold=1, within=timedelta(0))
            subject = "tuneline: a retrain run failed"
            body = ("retrain run {{ flow_run.name }} ended {{ flow_run.state.name }}: "
                    "{{ flow_run.state.message }}")
        else:
            trigger = EventTrigger(
                expect={MODEL_EVENT_PREFIX + what},
                match={"prefect.resource.id": f"{MODEL_EVENT_PREFIX}{params.registry.model_name}"},
                posture="Reactive", threshold=1, within=timedelta(0))
            subject = f"tuneline: {params.registry.model_name} {what}"
            body = ("{{ event.event }}: {{ event.payload.model }} v{{ event.payload.version }} "
                    "{{ event.payload.reasons | join('; ') }} {{ event.payload.by }}")
        out.append(Automation(
            name=f"tuneline notify: {params.registry.model_name} {what}",
            description=f"POST to notify.webhook_url when {what}",
            trigger=trigger,
            actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)]))
    return out


def ensure_notifications(params: Params) -> list[str]:
    """Save the webhook block and (re)create the notification automations; remove them all
    when `notify.webhook_url` is empty. Returns the automations' names."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    prefix = f"tuneline notify: {params.registry.model_name} "
    with get_client(sync_client=True) as client:
        for existing in client.read_automations():
            if existing.name.startswith(prefix):
                client.delete_automation(existing.id)
    if not params.notify.webhook_url:
        return []
    block = CustomWebhookNotificationBlock(
        name=NOTIFY_BLOCK, url=params.notify.webhook_url, method="POST",
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        allow_private_urls=True)  # the URL is the operator's (params.yaml), often in-cluster
    block_id = block.save(NOTIFY_BLOCK, overwrite=True)
    created = [a.create() for a in notification_automations(params, block_id)]
    return [a.name for a in created if isinstance(a, Automation)]
