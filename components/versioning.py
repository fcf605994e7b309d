"""Data versions with DVC: record the prepared data in dvc.lock and push it to the remote.

`prepare` writes the prepared folder; `version_prepared` then does what `dvc repro prepare`
would have recorded: it commits the stage's outputs to the DVC cache, updates dvc.lock,
and pushes the data to the default remote (a local folder unless configured otherwise).
It only does so when the run used the paths and `data` params that dvc.yaml declares;
otherwise dvc.lock would describe data that was made differently, so the data is hashed
for lineage but not committed, and the result says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import ConfigError, Params, load_params
from components.data_io import data_version

PREPARE_STAGE = "prepare"


def dvc_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding a DVC project (.dvc/ + dvc.yaml)."""
    for folder in [start, *start.parents]:
        if (folder / ".dvc").is_dir() and (folder / "dvc.yaml").exists():
            return folder
    return None


def _why_not_committable(params: Params, root: Path) -> str | None:
    try:
        declared = load_params(root / "params.yaml")
    except ConfigError as exc:
        return f"params.yaml of the DVC project is invalid: {exc}"
    if declared.data != params.data:
        return "the run overrides `data` params, which dvc.lock would not show"
    for name in ("raw", "prepared"):
        ours = (Path.cwd() / getattr(params.paths, name)).resolve()
        theirs = (root / getattr(declared.paths, name)).resolve()
        if ours != theirs:
            return f"paths.{name} differs from the dvc.yaml stage ({ours} vs {theirs})"
    return None


def version_prepared(params: Params, push: bool = True) -> dict[str, Any]:
    """Hash the prepared data and, when it is the dvc.yaml stage's output, commit + push it.

    Returns:
        {"data_hash": DVC md5 of the prepared folder, "dvc": what was done or why not}.
    """
    prepared = Path(params.paths.prepared).resolve()
    result: dict[str, Any] = {"data_hash": data_version(prepared)}
    root = dvc_root(Path.cwd().resolve())
    if root is None:
        result["dvc"] = "skipped: not inside a DVC project"
        return result
    reason = _why_not_committable(params, root)
    if reason:
        result["dvc"] = f"skipped: {reason}"
        return result
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(PREPARE_STAGE, force=True)
        result["dvc"] = "committed to dvc.lock"
        if push:
            pushed = repo.push(targets=[PREPARE_STAGE])
            result["dvc"] += f"; pushed {pushed} file(s) to the default remote"
    return result
