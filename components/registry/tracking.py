"""MLflow tracking: one run per training with params, per-step metrics, artifacts, lineage.

Importable without torch or transformers. The tracking URI is `MLFLOW_TRACKING_URI` when
set, else `registry.tracking_uri` (default: a SQLite file in the project); with a local
store, artifacts go to `registry.artifact_root`. Everything goes through an explicit
`MlflowClient`, never the global active run, so concurrent flows cannot mix their runs.

Typical use by the orchestration:
    run_id = start_run(params, prepared_dir)
    train(..., logger=MlflowLogger(params, run_id))
    log_stage(params, run_id, "test", metrics, eval_dir)
    registry.publish(params, run_id, bundle_dir, verdict)
    end_run(params, run_id)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from components.config import PROJECT_ROOT, Params

LOCAL_SCHEMES = ("sqlite:", "file:")
MLFLOW_UI_ENV = "TUNELINE_MLFLOW_UI_URL"  # the MLflow UI links point at (see version_url)
MAX_PARAM_CHARS = 6000  # MLflow rejects longer param values
# The user-info part of a URI (`scheme://user:password@host`): never logged.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(value: Any) -> Any:
    """`value` with the user-info of every URI in it replaced by `***` (nested dicts and
    lists too): what is logged to MLflow, printed or written beside a model."""
    if isinstance(value, str):
        return _USERINFO.sub(r"\g<scheme>***@", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def tracking_uri(params: Params) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `registry.tracking_uri`; a relative SQLite path
    is made absolute from the working folder (MLflow caches a store by its URI, so one
    process moving between projects must not reach the first project's database)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.registry.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str(Path(uri[len(prefix):]).absolute())
    return uri


def version_url(params: Params, version: str) -> str | None:
    """The model version's page in the MLflow UI: the one named by TUNELINE_MLFLOW_UI_URL
    (`tuneline ui` sets it for its flows), else the tracking server when MLflow is one
    (http/https); None when neither names one."""
    uri = os.environ.get(MLFLOW_UI_ENV) or tracking_uri(params)
    if not uri.startswith(("http://", "https://")):
        return None
    bare = _USERINFO.sub(r"\g<scheme>", uri).rstrip("/")  # never a password in a link
    return f"{bare}/#/models/{params.registry.model_name}/versions/{version}"


def get_client(params: Params) -> Any:
    """An MlflowClient bound to the tracking URI (also used as the registry URI)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(params: Params, client: Any | None = None) -> str:
    """Id of `registry.experiment`, creating it (artifacts under artifact_root) if needed."""
    client = client or get_client(params)
    name = params.registry.experiment
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri(params).startswith(LOCAL_SCHEMES) or "://" not in tracking_uri(params):
        location = Path(params.registry.artifact_root).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """HEAD commit of the project (suffixed "-dirty" with uncommitted changes), or "unknown"."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def lineage_tags(params: Params, prepared_dir: str | Path | None) -> dict[str, str]:
    """git commit, DVC-style data hash, params hash, strategy, PEFT method, backbone."""
    tags = {"git_commit": git_commit(), "params_hash": params.hash(),
            "strategy": params.finetune.strategy, "peft_method": params.peft.method,
            "backbone": params.model.name_or_path}
    if prepared_dir is not None and Path(prepared_dir).exists():
        from components.data.files import data_version

        tags["data_version"] = data_version(prepared_dir)
    return tags


SPLITS = ("train", "validation", "test")


def dataset_refs(params: Params, prepared_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{split: {"name", "digest", "source", "rows"}} of the prepared splits: the digest is the
    md5 DVC stores the file under, the source names the DVC remote and the folder's hash, so
    the exact rows can be fetched back (`tuneline data restore`)."""
    from components.data.files import data_version, md5_file

    folder = Path(prepared_dir)
    version = data_version(folder)
    remote = _dvc_remote_url()
    refs = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.exists():
            continue
        with open(path, "rb") as fh:
            rows = sum(1 for _ in fh)
        refs[split] = {"name": f"{params.registry.model_name}-{split}",
                       "digest": md5_file(path), "rows": rows,
                       "source": json.dumps({"dvc_remote": redact(remote),
                                             "data_version": version,
                                             "path": f"{split}.jsonl"})}
    return refs


def log_datasets(params: Params, run_id: str, prepared_dir: str | Path,
                 client: Any | None = None) -> dict[str, dict[str, Any]]:
    """Log the prepared splits as the run's dataset inputs (context train / validation /
    test); MLflow keeps one entry per (name, digest), so logging again adds nothing."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    refs = dataset_refs(params, prepared_dir)
    schema = json.dumps({"mlflow_colspec": [
        {"name": params.data.text_column, "type": "string"},
        {"name": params.data.label_column, "type": "string"}]})
    inputs = [DatasetInput(Dataset(ref["name"], ref["digest"], "dvc", ref["source"],
                                   schema=schema, profile=json.dumps({"num_rows": ref["rows"]})),
                           tags=[InputTag("mlflow.data.context", split)])
              for split, ref in refs.items()]
    (client or get_client(params)).log_inputs(run_id, datasets=inputs)
    return refs


def _dvc_remote_url() -> str:
    """The default DVC remote's URL of the project ("" without one)."""
    try:
        from dvc.repo import Repo

        with Repo() as repo:  # the project the working folder is in
            config = repo.config
            name = config["core"].get("remote")
            return str(config["remote"][name]["url"]) if name else ""
    except Exception:  # noqa: BLE001 — a name in the lineage, never a reason to fail
        return ""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists and scalars become strings."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


def start_run(params: Params, prepared_dir: str | Path | None = None, *,
              run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run with every param, the lineage tags and the resolved params.yaml.

    Returns:
        The run id; pass it to MlflowLogger, log_stage, registry.publish and end_run.
    """
    from mlflow.entities import Param

    client = get_client(params)
    all_tags = {**lineage_tags(params, prepared_dir), **(tags or {})}
    run = client.create_run(ensure_experiment(params, client), run_name=run_name,
                            tags=all_tags)
    run_id = run.info.run_id
    items = [Param(k, v) for k, v in flatten(redact(params.model_dump(mode="json"))).items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=items[i: i + 100])
    log_params_file(params, run_id, "config/params.yaml")
    return run_id


def log_params_file(params: Params, run_id: str, artifact: str) -> None:
    """The resolved params as a YAML artifact at `artifact` (e.g. config/params.yaml)."""
    folder, _, name = artifact.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(yaml.safe_dump(redact(params.model_dump(mode="json")), sort_keys=False))
        get_client(params).log_artifact(run_id, str(path), folder or None)


class MlflowLogger:
    """The training loop's `(metrics, step) -> None` logger, writing to one MLflow run."""

    def __init__(self, params: Params, run_id: str) -> None:
        self.client = get_client(params)
        self.run_id = run_id

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, int(step)) for key, value in metrics.items()
                 if isinstance(value, int | float)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)


def log_stage(params: Params, run_id: str, stage: str, metrics: dict[str, Any] | None = None,
              folder: str | Path | None = None) -> None:
    """Log a stage's scalar metrics as `<stage>/<name>` and its output folder as artifacts."""
    if metrics:
        MlflowLogger(params, run_id)({f"{stage}/{k}": v for k, v in metrics.items()}, 0)
    if folder is not None and Path(folder).is_dir():
        get_client(params).log_artifacts(run_id, str(folder), stage)


@contextlib.contextmanager
def system_metrics(params: Params, run_id: str) -> Iterator[None]:
    """While inside, log this machine's CPU, memory, disk and network use to the run as
    `system/*` metrics every `registry.system_metrics_interval_s` (MLflow's system metrics
    monitor); does nothing unless `registry.system_metrics` is on."""
    if not params.registry.system_metrics:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri(params),
                                   sampling_interval=params.registry.system_metrics_interval_s)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def end_run(params: Params, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED (or FAILED / KILLED)."""
    get_client(params).set_terminated(run_id, status=status)
