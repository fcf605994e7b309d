"""Stage `finetune`: train the classifier; the MLflow run of the model starts here.

The run carries the lineage of the model (git commit, params hash, the content hashes of
the input bytes and of the prepared splits, strategy, PEFT method); later stages log their
reports to the same run, found through this stage's record.

With `finetune.nproc` > 1 the training runs as that many ranks under torchrun
(components/train/finetune/distributed.py); this process keeps the MLflow run and the record,
rank 0 logs to the run and saves the model. A rank that dies fails the stage: the model
folder is left as it was, and `--resume` continues from the last checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from components.config import PROJECT_ROOT, Params
from components.io import atomic_write_json, atomic_write_text, read_json
from components.stages.base import StageResult, run_stage
from components.stages.chain import RUN_FILE, pretrain_scalars, run_tags, starting_backbone
from components.stages.spec import fingerprint


def finetune(params: Params, *, resume: bool = False, force: bool = False,
             checkpoint_dir: Path | None = None, logger: Any = None,
             tags: dict[str, str] | None = None, run_name: str | None = None) -> StageResult:
    """Fine-tune with `finetune.strategy` / `peft.method`; save to `paths.model`.

    Args:
        resume: continue from the latest checkpoint instead of starting over.
        force: train even when `paths.model` already holds this fingerprint's model.
        logger: also called as `logger(metrics, step)` after MLflow has the numbers (a
            sweep trial reports to its study here, and may raise to stop the training).
        tags: extra tags of the model's MLflow run (e.g. `mlflow.parentRunId`).
        run_name: name of the model's MLflow run.
    """
    from components.registry import tracking

    fp = fingerprint("finetune", params)
    checkpoints = Path(checkpoint_dir or params.paths.checkpoints)

    def compute(out: Path) -> dict[str, Any]:
        init = starting_backbone(params)  # None: the original (pretraining off or discarded)
        run_id = _resumed_run(params, checkpoints) if resume else None
        run_id = run_id or tracking.start_run(params, params.paths.prepared, run_name=run_name,
                                              tags={**run_tags(params, fp), **(tags or {})})
        checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_text(checkpoints / RUN_FILE, run_id)
        try:
            with tracking.system_metrics(params, run_id):
                metrics = _train(params, out, init, checkpoints, resume, run_id, logger)
        except BaseException:
            tracking.end_run(params, run_id, "FAILED")
            raise
        tracking.log_stage(params, run_id, "finetune", metrics)
        tracking.log_stage(params, run_id, "pretrain", pretrain_scalars(params))
        tracking.end_run(params, run_id)
        return {**metrics, "mlflow_run_id": run_id}

    return run_stage("finetune", params, compute, describe, force=force or resume)


def _train(params: Params, out: Path, init: Path | None, checkpoints: Path, resume: bool,
           run_id: str, logger: Any) -> dict[str, Any]:
    from components.registry import tracking
    from components.train.finetune import train

    if params.finetune.nproc > 1 and "WORLD_SIZE" not in os.environ:
        # The ranks log to MLflow themselves (rank 0); an extra logger stays unused.
        return train_distributed(params, out, init, checkpoints, resume, run_id)
    return train(params, params.paths.prepared, out, init_dir=init,
                 checkpoint_dir=checkpoints, resume=resume,
                 logger=_with_extra(tracking.MlflowLogger(params, run_id), logger))


def _with_extra(mlflow_logger: Any, extra: Any) -> Any:
    if extra is None:
        return mlflow_logger

    def both(metrics: dict[str, float], step: int) -> None:
        mlflow_logger(metrics, step)
        extra(metrics, step)
    return both


def train_distributed(params: Params, out: Path, init: Path | None, checkpoints: Path,
                      resume: bool, run_id: str | None) -> dict[str, Any]:
    """Train as `finetune.nproc` ranks under torchrun (rank 0 saves the model to `out`);
    returns rank 0's final metrics.

    Raises:
        DistributedRunFailed: a rank failed or was killed (nothing was saved).
    """
    from components.train.finetune.distributed import launch

    with tempfile.TemporaryDirectory(prefix="tuneline-dist-") as tmp:
        job, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        atomic_write_json(job, {
            "params": params.model_dump(mode="json"), "prepared": str(params.paths.prepared),
            "model": str(out), "init_dir": str(init) if init else None,
            "checkpoints": str(checkpoints), "resume": resume, "run_id": run_id,
            "result": str(result)})
        # The ranks import this checkout's code whatever the working folder.
        path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH"))
                               if p)
        launch(params.finetune.nproc, ["components.stages.ranks", str(job)],
               log_dir=checkpoints, env={"PYTHONPATH": path})
        return read_json(result)


def _resumed_run(params: Params, checkpoints: Path) -> str | None:
    """The MLflow run of the interrupted training being resumed, if this store has it."""
    from mlflow.exceptions import MlflowException

    from components.registry import tracking

    path = checkpoints / RUN_FILE
    if not path.exists():
        return None
    run_id = path.read_text().strip()
    try:
        tracking.get_client(params).get_run(run_id)
    except MlflowException:
        return None
    return run_id






def describe(m: dict[str, Any]) -> str:
    val = m.get("val_accuracy")
    val_text = f", validation accuracy {val:.4f}" if isinstance(val, float) else ""
    length = (f", max_length {m['max_length']} ({m['truncated_share']:.1%} of training texts "
              "truncated)" if isinstance(m.get("truncated_share"), float) else "")
    return (f"{m['strategy']} (peft {m['peft_method']}): {m['steps']} steps in "
            f"{m['train_seconds']:.0f} s{val_text} (shipped step {m['best_step']}){length}; "
            f"MLflow run {m.get('mlflow_run_id')}")
