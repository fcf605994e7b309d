"""Prefect tasks: each is one stage function of components/stages, nothing more.

A task adds only Prefect concerns: its name, retries with backoff on the stages that do
I/O which another attempt can fix (reading inputs, DVC, MLflow), and the time spent in the
stage (for telling compute from orchestration). Skipping work that was already done is the
stage's own job (its fingerprint), so it behaves the same under `dvc repro` and the CLI;
the stage's log lines reach the Prefect UI through the `tuneline` logger.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components import stages


def _transient(task_, task_run, state) -> bool:
    """Retry only errors that another attempt can fix (I/O, network), never bad input."""
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError) as exc:
        return not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError))
    except Exception:  # noqa: BLE001 — everything else is deterministic: do not retry
        return False
    return False


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": _transient}

# Seconds spent inside each stage's own code, for telling compute from orchestration time.
STAGE_SECONDS: ContextVar[dict[str, float] | None] = ContextVar("stage_seconds", default=None)


def stage_task(fn: Callable[..., Any], name: str, io: bool = False) -> Any:
    """`fn` as a Prefect task named `name`, timed; retried with backoff when `io`."""
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink = STAGE_SECONDS.get()
            if sink is not None:
                sink[name] = sink.get(name, 0.0) + time.perf_counter() - t0
    return task(name=name, cache_policy=NO_CACHE, **(IO_RETRIES if io else {}))(timed)


ingest = stage_task(stages.ingest, "ingest", io=True)
prepare = stage_task(stages.prepare, "prepare")
version_data = stage_task(stages.version_data, "version-data", io=True)
find_registered = stage_task(stages.find_registered, "find-registered", io=True)
pretrain = stage_task(stages.pretrain, "pretrain")
def finetune_resuming(params: Any, **kwargs: Any) -> Any:
    """The finetune stage; when a rank of a distributed run died, once more from the last
    checkpoint (the failed attempt saved and registered nothing)."""
    from components.train.finetune.distributed import DistributedRunFailed

    try:
        return stages.finetune(params, **kwargs)
    except DistributedRunFailed as exc:
        logging.getLogger("tuneline.stages").warning(
            "finetune: %s; resuming from the last checkpoint", str(exc).splitlines()[0])
        return stages.finetune(params, **{**kwargs, "resume": True})


finetune = stage_task(finetune_resuming, "finetune")
compress = stage_task(stages.compress, "compress")
evaluate = stage_task(stages.evaluate, "evaluate")
export = stage_task(stages.export, "export")
gate = stage_task(stages.gate, "gate", io=True)
register = stage_task(stages.register, "register", io=True)
