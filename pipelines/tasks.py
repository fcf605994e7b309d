"""Prefect tasks: each wraps one component function, nothing more.

Expensive stages (pretrain, finetune, evaluate, export) carry a fingerprint of their
inputs: data hash, the params sections they read, the code version and the fingerprint
of the stage before. A stage whose output folder already holds the same fingerprint is
skipped, and the log says so. Retries (with backoff) are only on tasks that do I/O with
something that can fail transiently: reading the input, DVC, MLflow.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.config import Params
from components.io import read_json
from components.lineage import FINGERPRINT_FILE, fingerprint, is_current, mark_current


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


def stage(name: str, io: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """`@task` with no result caching, timed; retries with backoff when `io` is True."""
    def wrap(fn: Callable[..., Any]) -> Any:
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
    return wrap


@stage("prepare-data", io=True)
def prepare_data(params: Params, data_path: str | None) -> dict[str, Any]:
    from components.data import prepare_dataset
    from components.demo import resolve_input

    source = resolve_input(params, data_path)
    report = prepare_dataset(source, params.paths.prepared, params.data)
    get_run_logger().info("prepared %s: %d of %d rows kept, quarantined %s", source,
                          report["rows_ok"], report["rows_in"], report["quarantined"])
    return report


@stage("version-data", io=True)
def version_data(params: Params, data_path: str | None) -> dict[str, Any]:
    from components.data import data_version
    from components.demo import resolve_input
    from components.versioning import version_prepared

    result = version_prepared(params)
    result["raw_data_hash"] = data_version(resolve_input(params, data_path))
    get_run_logger().info("data version %s (DVC: %s)", result["data_hash"], result["dvc"])
    return result


def _skip_if_current(stage: str, out_dir: Path, fp: str) -> bool:
    if is_current(out_dir, fp):
        get_run_logger().info("%s skipped: %s already holds the output of these exact inputs "
                              "(fingerprint %s)", stage, out_dir, fp)
        return True
    return False


def _reuse_or_run(stage: str, out_dir: Path, fp: str, compute: Callable[[], dict[str, Any]]
                  ) -> tuple[dict[str, Any], bool]:
    """(result, skipped): the result stored with a current output, else `compute()`'s."""
    if _skip_if_current(stage, out_dir, fp):
        return read_json(out_dir / FINGERPRINT_FILE)["result"], True
    result = compute()
    mark_current(out_dir, fp, result=result)
    return result, False


@stage("pretrain")
def pretrain_backbone(params: Params, code: str) -> dict[str, Any]:
    from components.data import data_version, load_split, load_unlabeled
    from components.pretrain import pretrain_mlm

    unlabeled = Path(params.paths.corpus) / "unlabeled.txt"
    source = unlabeled if unlabeled.exists() else Path(params.paths.prepared) / "train.jsonl"
    fp = fingerprint("pretrain", data=data_version(source), code=code,
                     model=params.model.model_dump(mode="json"),
                     pretrain=params.pretrain.model_dump(mode="json"))

    def compute() -> dict[str, Any]:
        texts = (load_unlabeled(source) if source == unlabeled
                 else load_split(params.paths.prepared, "train")[0])
        return pretrain_mlm(params, texts, params.paths.pretrained)

    metrics, skipped = _reuse_or_run("pretrain", Path(params.paths.pretrained), fp, compute)
    get_run_logger().info("pretrain: held-out MLM loss %.3f -> %.3f",
                          metrics["heldout_loss_before"], metrics["heldout_loss_after"])
    return {**metrics, "fingerprint": fp, "skipped": skipped}


def finetune_fingerprint(params: Params, data_hash: str, code: str,
                         init: dict[str, Any] | None) -> str:
    """Everything that decides the fine-tuned weights."""
    return fingerprint("finetune", data=data_hash, code=code,
                       init=init["fingerprint"] if init else None,
                       model=params.model.model_dump(mode="json"),
                       peft=params.peft.model_dump(mode="json"),
                       finetune=params.finetune.model_dump(mode="json"))


def release_fingerprint(params: Params, model_fp: str) -> str:
    """A trained model plus the rules it is judged and shipped by: one registry version."""
    return fingerprint("release", model=model_fp,
                       evaluate=params.evaluate.model_dump(mode="json"),
                       export=params.export.model_dump(mode="json"),
                       gate=params.gate.model_dump(mode="json"),
                       model_name=params.registry.model_name)


@stage("find-registered", io=True)
def find_registered(params: Params, model_fp: str) -> dict[str, Any] | None:
    """The registered version made from exactly these inputs, if there is one."""
    from components.registry import find_version

    found = find_version(params, release_fingerprint=release_fingerprint(params, model_fp))
    if found is not None:
        get_run_logger().info(
            "nothing to do: data, params and code are unchanged since v%s (aliases %s); "
            "training, export and registration skipped", found["version"], found["aliases"])
    return found


@stage("start-tracking", io=True)
def start_tracking(params: Params, data: dict[str, Any], model_fp: str, code: str) -> str:
    from components.tracking import start_run

    run_id = start_run(params, params.paths.prepared, tags={
        "model_fingerprint": model_fp, "code_version": code,
        "release_fingerprint": release_fingerprint(params, model_fp),
        "raw_data_hash": data["raw_data_hash"], "dvc": data["dvc"][:500]})
    get_run_logger().info("MLflow run %s", run_id)
    return run_id


@contextmanager
def tracked(params: Params, run_id: str) -> Iterator[None]:
    """End the MLflow run FINISHED, or FAILED when a stage raises."""
    from components.tracking import end_run

    try:
        yield
    except BaseException:
        end_run(params, run_id, "FAILED")
        raise
    end_run(params, run_id)


@stage("finetune")
def finetune_model(params: Params, model_fp: str, init: dict[str, Any] | None,
                   run_id: str) -> dict[str, Any]:
    from components.finetune import train
    from components.tracking import MlflowLogger, log_stage

    out = Path(params.paths.model)
    if _skip_if_current("finetune", out, model_fp):
        metrics = read_json(out / "tuneline_model.json")["metrics"]
        log_stage(params, run_id, "finetune", metrics)
        return {**metrics, "skipped": True}
    metrics = train(params, params.paths.prepared, out,
                    init_dir=params.paths.pretrained if init else None,
                    logger=MlflowLogger(params, run_id))
    mark_current(out, model_fp)
    log_stage(params, run_id, "finetune", metrics)
    get_run_logger().info("finetune (%s, peft=%s): %d steps in %.1fs, val accuracy %.4f",
                          params.finetune.strategy, params.peft.method, metrics["steps"],
                          metrics["train_seconds"], metrics.get("val_accuracy", float("nan")))
    return {**metrics, "skipped": False}


@stage("evaluate")
def evaluate_model(params: Params, model_fp: str, run_id: str) -> dict[str, Any]:
    from components.evaluate import evaluate_model as evaluate
    from components.tracking import log_stage

    fp = fingerprint("evaluate", model=model_fp, cfg=params.evaluate.model_dump(mode="json"))
    out = Path(params.paths.eval)
    metrics, _ = _reuse_or_run("evaluate", out, fp, lambda: evaluate(
        params.paths.model, params.paths.prepared, out, params))
    log_stage(params, run_id, "test", metrics, out)
    get_run_logger().info("evaluate: %s", {k: round(v, 4) for k, v in metrics.items()
                                           if isinstance(v, float)})
    return metrics


@stage("export")
def export_model(params: Params, model_fp: str, run_id: str) -> dict[str, Any]:
    from components.export import export_bundle
    from components.tracking import log_stage

    fp = fingerprint("export", model=model_fp, cfg=params.export.model_dump(mode="json"))
    out = Path(params.paths.export)
    parity, _ = _reuse_or_run("export", out, fp, lambda: export_bundle(
        params.paths.model, params.paths.prepared, out, params))
    log_stage(params, run_id, "export", _scalars(parity))
    get_run_logger().info("export: fp32 + int8 ONNX bundle in %s", out)
    return parity


def _scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


@stage("gate", io=True)
def gate_model(params: Params) -> dict[str, Any]:
    """Judge the exported challenger; the champion is re-scored on the same test split."""
    from components.gate import run_gate
    from components.registry import champion_bundle

    with tempfile.TemporaryDirectory() as tmp:
        champion = champion_bundle(params, Path(tmp) / "champion")
        verdict = run_gate(params.paths.export, params.paths.prepared, params, champion,
                           out_dir=params.paths.gate)
    logger = get_run_logger()
    logger.info("gate %s (%s)", "PASSED" if verdict["passed"] else "REJECTED",
                "first model" if champion is None else "vs the re-scored @champion")
    for reason in verdict["reasons"]:
        logger.warning("gate: %s", reason)
    return verdict


@stage("register", io=True)
def publish_model(params: Params, run_id: str, verdict: dict[str, Any]) -> dict[str, Any]:
    from components.registry import publish
    from components.tracking import log_stage

    log_stage(params, run_id, "gate", None, params.paths.gate)
    published = publish(params, run_id, params.paths.export, verdict)
    get_run_logger().info("registered %s v%s: %s", params.registry.model_name,
                          published["version"], ", ".join(published["moves"]))
    return published
