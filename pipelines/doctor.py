"""Is this machine ready to run the pipeline? One check per thing a run needs: Python,
torch, the MLflow store, Prefect, the DVC remote, free disk. Each says OK, WARN (works,
with a limit worth knowing) or FAIL (a run would fail), and what to do about it.

The checks read and ask; they change nothing, except that the probe of a DVC remote that
is not a local folder writes one empty file there and deletes it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sqlite3
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from components.config import Params
from components.registry.tracking import redact, tracking_uri
from pipelines import DISTRIBUTION

OK, WARN, FAIL = "OK", "WARN", "FAIL"
TIMEOUT_S = 5.0  # per server asked; a healthy one answers in milliseconds
# Free space under which a run is likely to fail (a model, its checkpoints, the ONNX
# bundle and the registry's copy of it take a few hundred MB), or soon will.
FAIL_BELOW_GB, WARN_BELOW_GB = 1.0, 5.0


@dataclass
class Check:
    """One line of `tuneline doctor`.

    Attributes:
        name: what was checked.
        status: OK, WARN or FAIL.
        detail: what was found.
        fix: what to do (empty when there is nothing to do).
        service: a server or remote (MLflow, Prefect, DVC), not this machine.
    """

    name: str
    status: str
    detail: str
    fix: str = ""
    service: bool = False

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<7} {self.detail}" + (
            f" -> {self.fix}" if self.fix else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(params: Params) -> list[Check]:
    """Every check, in order; a check that raises is a FAIL that names the error."""
    checks: list[tuple[str, bool, Callable[[Params], Check]]] = [
        ("python", False, check_python), ("torch", False, check_torch),
        ("mlflow", True, check_mlflow), ("prefect", True, check_prefect),
        ("dvc", True, check_dvc), ("disk", False, check_disk)]
    out = []
    for name, service, check in checks:
        try:
            out.append(check(params))
        except Exception as exc:  # noqa: BLE001 — a doctor reports, it does not crash
            first = (str(exc).splitlines() or [""])[0]
            out.append(Check(name, FAIL, f"{type(exc).__name__}: {first}", service=service))
    return out


def check_python(params: Params) -> Check:
    from importlib.metadata import PackageNotFoundError, metadata

    from packaging.specifiers import SpecifierSet

    here = platform.python_version()
    try:
        needed = metadata(DISTRIBUTION)["Requires-Python"] or ""
    except PackageNotFoundError:
        return Check("python", WARN, f"{here} ({sys.executable}); tuneline is not installed",
                     "pip install -e . in the project folder (make setup does)")
    if needed and here not in SpecifierSet(needed):
        return Check("python", FAIL, f"{here} ({sys.executable}); tuneline needs {needed}",
                     f"use a Python {needed} (make setup builds .venv with python3.11)")
    return Check("python", OK, f"{here} ({sys.executable}); tuneline needs {needed}")


def check_torch(params: Params) -> Check:
    try:
        import torch

        from components.train.finetune.distributed import check_precision, resolve_device
    except ImportError as exc:
        return Check("torch", FAIL, f"cannot import torch: {exc}",
                     "pip install -e . (torch is a dependency)")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    detail = (f"{torch.__version__}, CUDA {torch.version.cuda} build, {gpus} GPU(s) visible"
              if torch.version.cuda else f"{torch.__version__}, CPU build")
    wanted = params.model.device
    try:
        device = resolve_device(wanted)
        check_precision(params.finetune.precision, device)
    except ValueError as exc:
        return Check("torch", FAIL, f"{detail}; {exc}",
                     "set model.device=auto (or cpu) and finetune.precision=fp32, or install "
                     "a CUDA build of torch on a machine with a GPU")
    detail += f"; model.device {wanted}: trains on {device.type}"
    if torch.version.cuda and not gpus:
        return Check("torch", WARN, detail, "check the GPU driver (nvidia-smi) and "
                                            "CUDA_VISIBLE_DEVICES")
    return Check("torch", OK, detail)


def check_mlflow(params: Params) -> Check:
    uri = tracking_uri(params)
    shown = redact(uri)
    fix = ("fix MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
           else "fix registry.tracking_uri")
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        return _mlflow_server(uri, shown, fix)
    if scheme == "sqlite":
        if ":memory:" in uri:
            return Check("mlflow", WARN, f"{shown}: nothing is kept after the process ends",
                         fix, service=True)
        return _sqlite_store(Path(uri[len("sqlite:///"):]), shown, fix)
    if scheme in ("", "file"):
        return _folder_store(Path(urlsplit(uri).path if scheme else uri), shown, fix)
    return Check("mlflow", WARN, f"{shown}: {scheme} stores are not checked here",
                 "`tuneline models` lists the versions if it is reachable", service=True)


def _mlflow_server(uri: str, shown: str, fix: str) -> Check:
    import httpx

    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    try:
        resp = httpx.get(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                         params={"max_results": 1}, timeout=TIMEOUT_S,
                         auth=(user, password or "") if user else None,
                         headers={"Authorization": f"Bearer {token}"} if token else None)
    except httpx.HTTPError as exc:
        return Check("mlflow", FAIL, f"cannot reach {shown} ({type(exc).__name__})",
                     f"start the server (`tuneline ui` starts one) or {fix}", service=True)
    if resp.status_code in (401, 403):
        return Check("mlflow", FAIL, f"{shown} refused (HTTP {resp.status_code})",
                     "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                     "MLFLOW_TRACKING_TOKEN)", service=True)
    if resp.status_code != 200:
        return Check("mlflow", FAIL, f"{shown} answered HTTP {resp.status_code} to an "
                                     "experiment search: not an MLflow server?", fix,
                     service=True)
    return Check("mlflow", OK, f"{shown} answers", service=True)


def _sqlite_store(path: Path, shown: str, fix: str) -> Check:
    if not path.exists():
        if path.parent.is_dir() and os.access(path.parent, os.W_OK):
            return Check("mlflow", OK, f"{shown} (created on first use)", service=True)
        return Check("mlflow", FAIL, f"{shown}: folder {path.parent} is missing or read-only",
                     f"create it, or {fix}", service=True)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=TIMEOUT_S)) as db:
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        return Check("mlflow", FAIL, f"{shown}: not a readable SQLite database ({exc})", fix,
                     service=True)
    if not os.access(path, os.W_OK):
        return Check("mlflow", FAIL, f"{shown} is read-only", "make it writable", service=True)
    what = "an MLflow store" if "registered_models" in tables else "set up on first use"
    return Check("mlflow", OK, f"{shown} ({what})", service=True)


def _folder_store(path: Path, shown: str, fix: str) -> Check:
    folder = _nearest_existing(path.absolute())
    if not os.access(folder, os.W_OK):
        return Check("mlflow", FAIL, f"{shown}: {folder} is not writable", fix, service=True)
    return Check("mlflow", OK, f"{shown} (a local folder)", service=True)


def check_prefect(params: Params) -> Check:
    try:
        import prefect
        from prefect.settings import get_current_settings
    except ImportError as exc:
        return Check("prefect", FAIL, f"cannot import prefect: {exc}",
                     "pip install -e . (prefect is a dependency)", service=True)
    api = get_current_settings().api
    if not api.url:
        return Check("prefect", WARN, f"{prefect.__version__}; PREFECT_API_URL is not set: "
                                      "`tuneline run` starts a temporary server",
                     "for `tuneline deploy` and `data ingest --notify`: `tuneline ui`, then "
                     f"export PREFECT_API_URL=http://127.0.0.1:{params.ui.prefect_port}/api",
                     service=True)
    return _prefect_server(prefect.__version__, api)


def _prefect_server(version: str, api: Any) -> Check:
    import httpx

    url, shown = str(api.url), redact(str(api.url))
    auth_string = api.auth_string.get_secret_value() if api.auth_string else ""
    key = api.key.get_secret_value() if api.key else ""
    try:
        resp = httpx.get(url.rstrip("/") + "/health", timeout=TIMEOUT_S,
                         auth=tuple(auth_string.split(":", 1)) if ":" in auth_string else None,
                         headers={"Authorization": f"Bearer {key}"} if key else None)
    except httpx.HTTPError as exc:
        return Check("prefect", FAIL, f"{version}; cannot reach PREFECT_API_URL {shown} "
                                      f"({type(exc).__name__})",
                     "start it (`tuneline ui`), or unset PREFECT_API_URL so that runs start "
                     "a temporary server", service=True)
    if resp.status_code in (401, 403):
        return Check("prefect", FAIL, f"{version}; {shown} refused (HTTP {resp.status_code})",
                     "set PREFECT_API_AUTH_STRING (user:password) or PREFECT_API_KEY",
                     service=True)
    if resp.status_code != 200:
        return Check("prefect", FAIL, f"{version}; {shown}/health answered HTTP "
                                      f"{resp.status_code}", "fix PREFECT_API_URL (it ends "
                                                             "in /api)", service=True)
    return Check("prefect", OK, f"{version}; server at {shown} answers", service=True)


def check_dvc(params: Params) -> Check:
    from dvc.repo import Repo

    from components.stages.spec import resolve
    from components.stages.version import dvc_root

    folder = resolve("${paths.prepared}", params).parent.absolute()
    root = dvc_root(folder)
    if root is None:
        return Check("dvc", WARN, f"{folder} is not inside a DVC project: runs store no data "
                                  "versions", "run in the project folder (or `dvc init`)",
                     service=True)
    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            return Check("dvc", FAIL, f"{root} has no default DVC remote: a run's push fails",
                         "dvc remote add -d NAME URL", service=True)
        remote = repo.cloud.get_remote(name)
        if remote.fs.protocol == "local":
            return _local_remote(Path(remote.path), f"remote {name!r} at {remote.path}")
        where = f"remote {name!r} at {redact(str(repo.config['remote'][name]['url']))}"
        probe = remote.fs.join(remote.path, f".tuneline-doctor-{uuid.uuid4().hex}")
        remote.fs.touch(probe)  # reachable and writable, or it raises
        remote.fs.rm(probe)
    return Check("dvc", OK, f"{where} is writable", service=True)


def _local_remote(path: Path, where: str) -> Check:
    folder = _nearest_existing(path)
    if not os.access(folder, os.W_OK):
        return Check("dvc", FAIL, f"{where}: {folder} is not writable",
                     "make it writable, or `dvc remote modify` its url", service=True)
    state = "" if path.exists() else " (created on the first push)"
    return Check("dvc", OK, f"{where} is writable{state}", service=True)


def check_disk(params: Params) -> Check:
    folder = Path.cwd()
    free_gb = shutil.disk_usage(folder).free / 1e9
    detail = f"{free_gb:.1f} GB free in {folder}"
    fix = "free space: old runs in artifacts/ and mlartifacts/, `dvc gc` for the DVC cache"
    if free_gb < FAIL_BELOW_GB:
        return Check("disk", FAIL, detail, fix)
    if free_gb < WARN_BELOW_GB:
        return Check("disk", WARN, detail, fix)
    return Check("disk", OK, detail)


def _nearest_existing(path: Path) -> Path:
    return next(p for p in [path, *path.parents] if p.exists())
