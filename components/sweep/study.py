"""The Optuna study behind a sweep: where it lives, what it is called, how a run resumes it.

The study's name is `sweep.study` plus a hash of everything a trial's score depends on
except the searched values (the finetune fingerprint at a fixed point of the space: data,
the other params, code), the space and the metric. Running the same sweep again therefore
resumes its study; changing the data or a setting outside the space starts a new one,
since their scores would not be comparable.

Resuming: trials still marked running belong to an interrupted run (one driver per study);
they are marked failed ("interrupted") and their values queued again, so they run first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import Params
from components.sweep.space import (
    anchor_values,
    check_space,
    current_values,
    in_space,
    typed_value,
    with_values,
)

log = logging.getLogger("tuneline.sweep")
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep run works on; picklable, so it travels to the Dask workers.

    Attributes:
        study: Optuna study name. storage: its storage URL.
        folder: trial models (`models/<fingerprint>`), trial folders, summary.
        parent_run_id: the sweep's MLflow run; every trial run is nested under it.
        to_run: trials this run may start (`sweep.n_trials` minus those already finished).
        requeued: numbers of interrupted trials queued again.
    """

    study: str
    storage: str
    folder: Path
    parent_run_id: str
    to_run: int
    finished: int
    requeued: tuple[int, ...] = ()


def storage_url(params: Params) -> str:
    """`sweep.storage`, else a SQLite file in `paths.sweep` (absolute: workers share it)."""
    if params.sweep.storage:
        return params.sweep.storage
    return f"sqlite:///{(Path(params.paths.sweep) / 'optuna.db').resolve()}"


def open_storage(url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several processes write the file: wait for the lock instead of failing.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def study_name(params: Params) -> str:
    from components.stages.spec import digest, fingerprint

    anchor = with_values(params, anchor_values(params))
    identity = digest("sweep", finetune=fingerprint("finetune", anchor),
                      space={k: v.model_dump(mode="json") for k, v in params.sweep.space.items()},
                      metric=params.sweep.metric)
    return f"{params.sweep.study}-{identity[:8]}"


def make_pruner(params: Params) -> Any:
    import optuna

    cfg = params.sweep.pruner
    if cfg.method == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials,
                                           n_warmup_steps=cfg.warmup_steps)
    if cfg.method == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, cfg.warmup_steps),
                                              reduction_factor=cfg.reduction_factor)
    if cfg.method == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, cfg.warmup_steps),
                                                      reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def load_study(params: Params, plan_or_url: SweepPlan | str, name: str | None = None,
               storage: Any = None) -> Any:
    """The study with a TPE sampler (`sweep.seed`) and the configured pruner."""
    import optuna

    url = plan_or_url.storage if isinstance(plan_or_url, SweepPlan) else plan_or_url
    name = plan_or_url.study if isinstance(plan_or_url, SweepPlan) else name
    sampler = optuna.samplers.TPESampler(seed=params.sweep.seed,
                                         n_startup_trials=params.sweep.startup_trials)
    return optuna.create_study(storage=storage or open_storage(url), study_name=name,
                               sampler=sampler,
                               pruner=make_pruner(params), direction="maximize",
                               load_if_exists=True)


def open_sweep(params: Params) -> SweepPlan:
    """Create or resume the study, queue its first trials, open the sweep's MLflow run.

    Raises:
        ConfigError: a searched key or choice the finetune stage cannot take.
    """
    check_space(params)
    url, name = storage_url(params), study_name(params)
    study = load_study(params, url, name)
    if not study.trials:
        _enqueue_start(study, params)
    requeued = _requeue_interrupted(study, url)
    finished = sum(1 for t in study.trials if t.state.name in FINISHED
                   and t.user_attrs.get("state") != INTERRUPTED)
    plan = SweepPlan(study=name, storage=url, folder=Path(params.paths.sweep).resolve() / name,
                     parent_run_id=_parent_run(params, study, url), finished=finished,
                     to_run=max(0, params.sweep.n_trials - finished), requeued=tuple(requeued))
    log.info("sweep: study %s (%d of %d trials finished%s), storage %s", name, finished,
             params.sweep.n_trials, f", {len(requeued)} interrupted queued again"
             if requeued else "", redact(url))
    return plan


def _enqueue_start(study: Any, params: Params) -> None:
    points = [(current_values(params), "current params")] if params.sweep.enqueue_current else []
    points += [({k: typed_value(params, k, v) for k, v in p.items()}, f"sweep.enqueue[{i}]")
               for i, p in enumerate(params.sweep.enqueue)]
    for i, point in enumerate(params.sweep.portfolio):
        values = {k: typed_value(params, k, v) for k, v in point.items()
                  if k in params.sweep.space and in_space(params.sweep.space[k],
                                                          typed_value(params, k, v))}
        if values and all(values != v for v, _ in points):
            points.append((values, f"sweep.portfolio[{i}]"))
    for values, source in points:
        # A repeated point is kept: its trial reuses the first one's record.
        study.enqueue_trial(values, user_attrs={"enqueued": source})


def _requeue_interrupted(study: Any, url: str) -> list[int]:
    from optuna.trial import TrialState

    storage = open_storage(url)
    study_id = storage.get_study_id_from_name(study.study_name)
    numbers = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "state", INTERRUPTED)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"enqueued": f"retry of {trial.number}"})
        numbers.append(trial.number)
    return numbers


def _parent_run(params: Params, study: Any, url: str) -> str:
    """The sweep's MLflow run: the study's own when this store still has it, else a new one."""
    from mlflow.exceptions import MlflowException

    from components.registry import tracking

    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            tracking.get_client(params).get_run(run_id)
            return run_id
        except MlflowException:
            pass
    run_id = tracking.start_run(params, params.paths.prepared, run_name=f"sweep {study.study_name}",
                                tags={"sweep_study": study.study_name, "sweep_role": "parent",
                                      "sweep_storage": redact(url)})
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


def redact(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cpu_seconds_used(study: Any) -> float:
    return float(sum(t.user_attrs.get("cpu_seconds", 0.0) for t in study.trials))


def stop_reason(params: Params, plan: SweepPlan, launched: int, started: float) -> str | None:
    """Why no further trial may start now (None: one may).

    Args:
        launched: trials this run has started. started: `time.monotonic()` at its start.
    """
    budget = params.sweep.budget
    if launched >= plan.to_run:
        return f"sweep.n_trials reached ({params.sweep.n_trials} trials)"
    if budget.wall_seconds and time.monotonic() - started >= budget.wall_seconds:
        return f"wall-time budget used ({budget.wall_seconds:.0f} s)"
    if budget.cpu_seconds:
        used = cpu_seconds_used(load_study(params, plan))
        if used >= budget.cpu_seconds:
            return f"CPU budget used ({used:.0f} of {budget.cpu_seconds:.0f} CPU-s)"
    return None
