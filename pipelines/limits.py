"""One retrain at a time per model: a slot on the Prefect server that its holder renews.

A schedule, a person in the UI and a `tuneline.data.changed` event can each start a
`retrain` run, on one runner or on several workers. Two runs of the same model at once
would overwrite each other's working folders (data/prepared, artifacts/) and move the
registry aliases in an interleaved order, so every run holds the model's slot from its
first stage to its last. A run that finds the slot taken waits for it
(`schedule.when_busy: wait`) or ends at once, Completed in a state named Skipped, saying
which run holds the model (`skip`).

The slot is the Prefect variable `retrain-slot-<registry.model_name>`, whose value names
its holder. Variables live in the server's database, so a server restart forgets no
holder. (Prefect's own concurrency leases live in the server's memory by default: after a
restart the limit still counted the slot as taken, the lease that would have freed it was
gone, and every later retrain waited forever.) The holder renews the variable every
`schedule.slot_renew_s`. A variable nobody renewed for `schedule.slot_ttl_s` is stale: its
run died, or could not reach the server. A waiting run that watched it stay unchanged that
long deletes it and takes the slot. Deleting and renewing by the variable's id, never by
its name, makes the takeover safe: of several runs racing for a stale slot one deletion
succeeds, and the old holder's next renewal finds its variable gone.

A holder that cannot show a renewal within the TTL no longer counts on the slot: the
retrain checks before each stage and stops with `RetrainSlotLost`, so it writes and
registers nothing more while another run may hold the model. Expiry is measured on each
process's own monotonic clock (a waiter from when it first saw the current renewal, the
holder from when it sent its last accepted one), so the clocks of two machines are never
compared for it. Only the `skip` shortcut reads the wall clock: a renewal recent by it
means skip at once; an old one is watched like a waiting run watches it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prefect import get_client
from prefect.client.schemas.actions import VariableCreate
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from components.config import Params


class RetrainBusy(RuntimeError):
    """Another retrain of the same model holds the slot and params say to skip."""


class RetrainSlotLost(RuntimeError):
    """This run no longer holds its model's slot: it must not write or register more."""


def slot_name(params: Params) -> str:
    """The variable's name (Prefect allows lowercase letters, digits, `-` and `_`)."""
    return "retrain-slot-" + re.sub(r"[^a-z0-9_-]", "-", params.registry.model_name.lower())


@contextlib.contextmanager
def one_retrain_per_model(params: Params, logger: Any, when_busy: str | None = None
                          ) -> Iterator[RetrainSlot]:
    """Hold the model's slot for the duration of the block, renewed in the background.

    Args:
        when_busy: "wait" or "skip"; default `schedule.when_busy`.

    Yields:
        The held slot: call `check(stage)` before each stage.

    Raises:
        RetrainBusy: the slot is taken and `when_busy` is `skip` (raised before the block
            runs).
    """
    slot = RetrainSlot(params, logger)
    when_busy = when_busy or params.schedule.when_busy
    logger.info("taking the %r slot (%s when busy)", slot.name, when_busy)
    try:
        slot.acquire(when_busy)
        with slot.renewed():
            yield slot
    finally:
        slot.release()


class RetrainSlot:
    """The model's slot as this process holds it."""

    def __init__(self, params: Params, logger: Any) -> None:
        self.name = slot_name(params)
        self.model = params.registry.model_name
        self.ttl = params.schedule.slot_ttl_s
        self.renew_every = params.schedule.slot_renew_s
        self.logger = logger
        self.holder = _holder()
        self.token = uuid.uuid4().hex  # tells this process's variable from any other's
        self._id: UUID | None = None
        self._since = ""
        self._renewed = 0.0  # monotonic time the last accepted renewal was sent
        self._taken = False  # the variable was deleted: taken over, or freed by hand
        self._why = ""       # why the slot was lost, once it was
        self._lock = threading.Lock()

    def acquire(self, when_busy: str) -> None:
        """Take the slot: wait for it, take over a stale one, or raise RetrainBusy (skip)."""
        started = time.monotonic()
        seen: tuple[UUID, Any] | None = None  # the holder's variable as last read ...
        seen_at = 0.0                         # ... and since when it has not changed
        with get_client(sync_client=True) as client:
            while True:
                sent = time.monotonic()
                record = self._create(client)
                if record is None:
                    record = client.read_variable_by_name(self.name)
                    if record is None:
                        continue  # freed in between: try again at once
                if _content(record).get("token") == self.token:  # ours (a retried create)
                    self._id, self._renewed = record.id, sent
                    self.logger.info("took the %r slot after %.1f s", self.name,
                                     time.monotonic() - started)
                    return
                value, now = _content(record), time.monotonic()
                ttl = max(self.ttl, float(value.get("ttl_s") or 0))  # the holder's, if longer
                if (record.id, value) != seen:
                    if when_busy == "skip" and (seen is not None or _recent(value, ttl)):
                        raise RetrainBusy(f"another retrain of {self.model} is running "
                                          f"({value.get('holder', 'holder unknown')}); "
                                          "schedule.when_busy=skip")
                    if seen is None or seen[0] != record.id:
                        self.logger.info("the %r slot is held by %s; waiting", self.name,
                                         value.get("holder", "an unknown holder"))
                    seen, seen_at = (record.id, value), now
                elif now - seen_at >= ttl:
                    self.logger.warning(
                        "%s has not renewed the %r slot for %.0f s (its run stopped or lost "
                        "the Prefect server): taking the slot over", value.get("holder"),
                        self.name, now - seen_at)
                    _delete(client, record.id)  # of several waiters, one deletion succeeds
                    seen = None
                    continue
                time.sleep(min(self.renew_every, max(0.0, seen_at + ttl - now)))

    def check(self, stage: str) -> None:
        """Raise RetrainSlotLost unless this run still holds the slot; call before `stage`."""
        with self._lock:
            lost = self._lost_reason()
        if lost:
            raise RetrainSlotLost(
                f"lost the retrain slot of {self.model}: {lost}; this run stopped before "
                f"{stage} and writes and registers nothing more while another retrain may "
                "hold the model")

    @contextlib.contextmanager
    def renewed(self) -> Iterator[None]:
        """Renew the slot every `slot_renew_s` in a background thread during the block."""
        stop = threading.Event()
        context = contextvars.copy_context()  # the run's Prefect settings (API URL, auth)
        thread = threading.Thread(target=context.run, args=(self._keep_renewed, stop),
                                  name=f"{self.name}-renewal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=self.renew_every)  # a renewal stuck on a dead server: leave it

    def release(self) -> None:
        """Free the slot unless another run took it over; never raises."""
        if self._id is None:
            return
        try:
            with get_client(sync_client=True) as client:
                _delete(client, self._id)
        except Exception as exc:  # noqa: BLE001 — the run's own outcome matters more
            self.logger.warning("could not free the %r slot (%s); it frees itself once "
                                "nobody renews it for %g s", self.name, exc, self.ttl)

    def _create(self, client: Any) -> Any:
        """The new variable, or None when one exists (someone holds the slot)."""
        self._since = _utc_now()
        try:
            return client.create_variable(VariableCreate(name=self.name,
                                                         value=self._value()))
        except ObjectAlreadyExists:
            return None

    def _keep_renewed(self, stop: threading.Event) -> None:
        # One attempt per tick, failing fast: the client's own retries (about a minute of
        # backoff) would land a renewal long after the slot lapsed.
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}), \
                get_client(sync_client=True) as client:
            while not stop.wait(self.renew_every):
                with self._lock:
                    if self._lost_reason():
                        break
                sent = time.monotonic()
                try:
                    client.request("PATCH", "/variables/{id}", path_params={"id": self._id},
                                   json={"value": self._value()})
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code == 404:
                        with self._lock:
                            self._taken = True
                        break
                    self.logger.warning("could not renew the %r slot: %s", self.name, exc)
                except Exception as exc:  # noqa: BLE001 — next tick tries again
                    self.logger.warning("could not renew the %r slot: %s", self.name, exc)
                else:
                    with self._lock:
                        if not self._lost_reason():  # accepted in time: held since `sent`
                            self._renewed = sent
        with self._lock:
            lost = self._lost_reason()
        if lost and not stop.is_set():
            self.logger.error("lost the %r slot: %s; the run stops before its next stage",
                              self.name, lost)

    def _lost_reason(self) -> str:
        """Why this process no longer holds the slot ("" while it does); call under _lock.

        Once lost, always lost: a renewal that gets through later does not win it back,
        since a waiting run may already count the slot as free.
        """
        age = time.monotonic() - self._renewed
        if not self._why and self._taken:
            self._why = (f"its variable {self.name!r} was taken over by another run or "
                         "deleted by hand")
        elif not self._why and age > self.ttl:
            self._why = (f"not renewed for {age:.0f} s (schedule.slot_ttl_s={self.ttl:g}): "
                         "the Prefect server was unreachable or this process stalled, and "
                         "another run may have taken the slot")
        return self._why

    def _value(self) -> dict[str, Any]:
        """What the variable shows (Prefect UI > Variables): who holds it, since when."""
        return {"holder": self.holder, "since": self._since, "renewed_at": _utc_now(),
                "ttl_s": self.ttl, "token": self.token}


def _delete(client: Any, variable_id: UUID) -> bool:
    """Delete the variable with this id; False when it is already gone."""
    try:
        client.request("DELETE", "/variables/{id}", path_params={"id": variable_id})
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return False
        raise
    return True


def _content(record: Any) -> dict[str, Any]:
    return record.value if isinstance(record.value, dict) else {}


def _recent(value: dict[str, Any], ttl: float) -> bool:
    """Whether the holder's last renewal is younger than `ttl` by the wall clock."""
    try:
        renewed = datetime.fromisoformat(value["renewed_at"])
    except (KeyError, TypeError, ValueError):
        return False
    return (datetime.now(UTC) - renewed).total_seconds() < ttl


def _utc_now() -> str:
    return datetime.now(UTC).isoformat()


def _holder() -> str:
    """Who takes the slot, as the variable and a skipped run's message show it."""
    where = f"pid {os.getpid()} on {socket.gethostname()}"
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return where
    return f"flow run {ctx.flow_run.name} ({ctx.flow_run.id}), {where}"
