"""One sweep trial: values asked in the driver, trained anywhere through the finetune stage.

The driver asks the study for each trial's values (`TrialQueue`: one sampler for the whole
run, and TPE's constant liar keeps concurrent trials apart); the worker running the trial
reports each validation score to the same study (pruning), then tells it the outcome.

A trial is the finetune stage with the trial's values, its own checkpoint and metrics
folders and `model.num_threads = sweep.threads_per_worker`, writing its model to
`models/<finetune fingerprint>` of the sweep folder. Because the stage skips work its
output already holds, a trial whose values and data match an earlier finished trial reuses
that record instead of training. Its MLflow run is nested under the sweep's run.

Outcomes: COMPLETE with the best validation score; PRUNED when the pruner stops it at an
evaluation (its run ends KILLED); FAIL when training raises or diverges (NaN), with the
error recorded. A failed trial never stops the sweep.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from components.config import Params
from components.io import atomic_write_json
from components.sweep.space import suggest, with_values
from components.sweep.study import SweepPlan, load_study, open_storage

log = logging.getLogger("tuneline.sweep")


class StudyReporter:
    """The training loop's logger in a trial: each validation score goes to the study, and
    the training stops (`optuna.TrialPruned`) when the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.key = trial, f"val/{metric}"

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        import optuna

        if self.key not in metrics:
            return
        value = float(metrics[self.key])
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {self.key} {value:.4f}")


def trial_params(params: Params, plan: SweepPlan, values: dict[str, Any],
                 number: int) -> Params:
    """The params one trial trains with (see the module docstring)."""
    return worker_params(params, plan, values, plan.folder / "trials" / f"{number:04d}")


def worker_params(params: Params, plan: SweepPlan, values: dict[str, Any],
                  folder: Path) -> Params:
    """`values` on a worker: its own checkpoint, metrics and lock under `folder`, the
    model under the sweep's `models/<finetune fingerprint>` (the same values, the same
    model: trained once)."""
    from components.stages.spec import fingerprint

    threads = {"model.num_threads": params.sweep.threads_per_worker}
    # A trial writes only its own folders, beside other trials: it locks its own folder,
    # not the project the sweep's driver holds.
    p = with_values(params, {**values, **threads}, checkpoints=folder / "checkpoints",
                    metrics=folder / "metrics", lock=folder / ".lock")
    return with_values(p, {}, model=plan.folder / "models" / fingerprint("finetune", p))


class TrialQueue:
    """The driver's side of the study: the next trial's number and values."""

    def __init__(self, params: Params, plan: SweepPlan) -> None:
        self.params, self.study = params, load_study(params, plan)

    def next(self) -> tuple[int, dict[str, Any]]:
        trial = self.study.ask()
        return trial.number, suggest(trial, self.params)


def open_trial(params: Params, plan: SweepPlan, number: int) -> Any:
    """Trial `number` of the study (asked elsewhere), for reporting and pruning here."""
    import optuna

    storage = open_storage(plan.storage)
    study = load_study(params, plan, storage=storage)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(plan.study), number)
    return study, optuna.trial.Trial(study, trial_id)


def run_trial(params: Params, plan: SweepPlan, number: int,
              values: dict[str, Any]) -> dict[str, Any]:
    """Train trial `number` with `values`; returns its record (also in its folder).

    Args:
        params: the sweep's params, paths absolute (the worker may run elsewhere).
        number, values: from `TrialQueue.next()` in the driver.
    """
    import optuna

    cpu0, wall0 = time.process_time(), time.perf_counter()
    study, trial = open_trial(params, plan, number)
    record: dict[str, Any] = {"number": trial.number, "params": values, "value": None,
                              "reused": False, "run_id": None, "reason": ""}
    folder = plan.folder / "trials" / f"{trial.number:04d}"
    try:
        tp = trial_params(params, plan, values, trial.number)
        record["fingerprint"] = tp.paths.model.name
        result = _train(tp, plan, trial)
    except optuna.TrialPruned as exc:
        record.update(state="PRUNED", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 — a failed trial is recorded, the sweep goes on
        record.update(state="FAIL", reason=f"{type(exc).__name__}: {exc}"[:1000])
    else:
        record.update(state="COMPLETE", value=float(result[f"val_{params.sweep.metric}"]),
                      reused=result.reused, run_id=result.get("mlflow_run_id"),
                      steps=result.get("steps"), best_step=result.get("best_step"))
    record.update(cpu_seconds=round(time.process_time() - cpu0, 2),
                  wall_seconds=round(time.perf_counter() - wall0, 2),
                  threads=params.sweep.threads_per_worker,
                  worker=f"{socket.gethostname()}:{os.getpid()}")
    record["run_id"] = _record_run(params, plan, folder, record)
    for key in ("state", "cpu_seconds", "wall_seconds", "reused", "reason", "run_id",
                "fingerprint", "steps", "worker"):
        if record.get(key) is not None:
            trial.set_user_attr(key, record[key])
    study.tell(trial, record["value"], state=optuna.trial.TrialState[record["state"]])
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the model is kept, not these
    atomic_write_json(folder / "trial.json", record)
    log.info("trial %d %s%s: %s", trial.number, record["state"].lower(),
             " (reused)" if record["reused"] else "", _describe(record, params))
    return record


def _train(tp: Params, plan: SweepPlan, trial: Any) -> Any:
    from components import stages

    return stages.finetune(tp, logger=StudyReporter(trial, tp.sweep.metric),
                           tags=nested_tags(plan, trial.number),
                           run_name=f"trial {trial.number}")


def nested_tags(plan: SweepPlan, number: int) -> dict[str, str]:
    return {"mlflow.parentRunId": plan.parent_run_id, "sweep_study": plan.study,
            "sweep_trial": str(number)}


def _record_run(params: Params, plan: SweepPlan, folder: Path, record: dict[str, Any]) -> str:
    """Give the trial's MLflow run its outcome; make one when training never opened it (a
    reused record, a failure before training)."""
    from components.registry import tracking
    from components.stages.chain import RUN_FILE

    client = tracking.get_client(params)
    started = folder / "checkpoints" / RUN_FILE
    run_id = None if record["reused"] else (
        record["run_id"] or (started.read_text().strip() if started.exists() else None))
    if run_id is None:
        tags = nested_tags(plan, record["number"])
        if record["reused"]:
            tags["reused_from_run"] = str(record["run_id"])
        run_id = tracking.start_run(params, params.paths.prepared, tags=tags,
                                    run_name=f"trial {record['number']}")
        for key, value in record["params"].items():
            client.log_param(run_id, f"trial.{key}", str(value))
    tags = {"sweep_state": record["state"].lower(), "sweep_reason": record["reason"][:5000]}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    metrics = {"sweep/cpu_seconds": record["cpu_seconds"],
               "sweep/wall_seconds": record["wall_seconds"]}
    if record["value"] is not None:
        metrics[f"sweep/val_{params.sweep.metric}"] = record["value"]
    tracking.MlflowLogger(params, run_id)(metrics, 0)
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[record["state"]]
    tracking.end_run(params, run_id, status)
    return run_id


def _describe(record: dict[str, Any], params: Params) -> str:
    values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in record["params"].items())
    score = (f"validation {params.sweep.metric} {record['value']:.4f}; "
             if record["value"] is not None else f"{record['reason']}; ")
    return f"{score}{values}; {record['cpu_seconds']:.0f} CPU-s"
