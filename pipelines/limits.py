"""One retrain at a time per model: a Prefect global concurrency limit named after it.

A schedule, a person in the UI and a `tuneline.data.changed` event can each start a
`retrain` run, on one runner or on several workers. Two runs of the same model at once
would overwrite each other's working folders (data/prepared, artifacts/) and move the
registry aliases in an interleaved order, so every run holds the one slot of the limit
`retrain-<registry.model_name>` from its first stage to its last. A run that finds the
slot taken waits for it (`schedule.when_busy: wait`) or ends at once, Completed in a state
named Skipped, saying which run holds the model (`skip`). The slot is a lease the run
renews while it works; a run that dies frees it when the lease runs out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from components.config import Params

LEASE_S = 300.0  # the holder renews its lease in the background; a dead one's slot frees then


class RetrainBusy(RuntimeError):
    """Another retrain of the same model holds the slot and params say to skip."""


def limit_name(params: Params) -> str:
    return f"retrain-{params.registry.model_name}"


def ensure_limit(params: Params) -> str:
    """Create the model's limit (one slot) unless it exists; returns its name.

    An existing limit is left as it is: whoever changed it in the UI meant to.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name(params)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextlib.contextmanager
def one_retrain_per_model(params: Params, logger: Any, when_busy: str | None = None
                          ) -> Iterator[None]:
    """Hold the model's slot for the duration of the block.

    Args:
        when_busy: "wait" or "skip"; default `schedule.when_busy`.

    Raises:
        RetrainBusy: the slot is taken and `when_busy` is `skip` (raised before the block
            runs).
    """
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    name = ensure_limit(params)
    when_busy = when_busy or params.schedule.when_busy
    skip = when_busy == "skip"
    holder = _holder()
    logger.info("taking the %r slot (%s when busy)", name, when_busy)
    acquired = False
    try:
        with concurrency(name, occupy=1, max_retries=0 if skip else None,
                         lease_duration=LEASE_S, strict=True, holder=holder,
                         raise_on_lease_renewal_failure=False):
            acquired = True
            yield
    except ConcurrencySlotAcquisitionError as exc:
        if acquired or not skip or "423" not in str(exc):
            raise
        raise RetrainBusy(f"another retrain of {params.registry.model_name} is running "
                          f"({_running_runs(holder)}); schedule.when_busy=skip") from None


def _holder() -> Any:
    """This flow run as the lease holder (shown on the limit in the UI)."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=ctx.flow_run.id)


def _running_runs(holder: Any) -> str:
    """Names of the other running `retrain` flow runs, for the skip message."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
    except Exception:  # noqa: BLE001 — the message is a courtesy; the skip stands
        return "holder unknown"
    own = holder.id if holder else None
    names = [f"flow run {r.name}" for r in runs if r.id != own]
    return ", ".join(names) or "holder unknown"
