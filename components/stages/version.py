"""Stage `version`: the ingested input and the prepared splits go into DVC, and back out.

`version_data` stores both in the DVC cache by content hash and pushes them to the default
remote, whatever path the input came from. When the run's paths and `data` params are the
ones params.yaml gives dvc.yaml, it also records the `ingest` and `prepare` stages in
dvc.lock (what `dvc repro` would have written), so `dvc status` agrees; when they are not
(a `--set data.*` override, outputs moved elsewhere), dvc.lock would describe data made
differently, so it is left alone and the result says why. `dvc repro` needs none of this:
DVC records its own stages; `dvc push` sends them.

`restore_data` walks lineage back: from the hashes a registered version carries, it fetches
the exact input and prepared splits from the remote alone and checks them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.config import ConfigError, Params, load_params
from components.data.files import data_version
from components.io import atomic_dir
from components.stages.base import StageResult, write_metrics
from components.stages.spec import LABELED, SPECS, UNLABELED, fingerprint, resolve

log = logging.getLogger("tuneline.stages")
# (version tag, path template) of every folder a model version can be restored from.
VERSIONED = (("input_version", LABELED), ("unlabeled_version", UNLABELED),
             ("data_version", "${paths.prepared}"))
LOCKED_STAGES = ("ingest", "prepare")
DVC_HASH = re.compile(r"[0-9a-f]{32}(\.dir)?")


class DataVersionError(RuntimeError):
    """Data could not be stored in or fetched from DVC; the message says what is missing."""


class DataRemoteError(DataVersionError):
    """The DVC remote could not be reached or refused (push or pull)."""


def dvc_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding a DVC project (.dvc/ + dvc.yaml)."""
    start = start.resolve()
    for folder in [start, *start.parents]:
        if (folder / ".dvc").is_dir() and (folder / "dvc.yaml").exists():
            return folder
    return None


def version_data(params: Params, push: bool = True) -> StageResult:
    """Store the input snapshots and the prepared splits in DVC (cache + remote).

    Returns:
        result: {"input_version", "unlabeled_version", "data_version", "dvc": what was
        done, "dvc_lock": recorded or why not, "pushed": files sent}.
    """
    started = time.perf_counter()
    folders = {tag: resolve(template, params) for tag, template in VERSIONED}
    result: dict[str, Any] = {tag: data_version(path) for tag, path in folders.items()}
    root = dvc_root(folders["data_version"].parent)
    if root is None:
        result.update(dvc="skipped: the data is not inside a DVC project", dvc_lock=None,
                      pushed=0)
    else:
        result.update(_store(root, params, list(folders.values()), push))
    write_metrics("version", params, result)
    summary = (f"data {result['data_version']} (input {result['input_version']}): "
               f"{result['dvc']}")
    log.info("version: %s", summary)
    return StageResult("version", fingerprint("prepare", params), False, None, result, summary,
                       time.perf_counter() - started)


@contextlib.contextmanager
def _quiet_dvc() -> Iterator[None]:
    """DVC narrates every commit ("Updating lock file") and warns about an empty folder
    (no unlabeled text is a normal case); the stage's own result says what happened."""
    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _store(root: Path, params: Params, folders: list[Path], push: bool) -> dict[str, Any]:
    from dvc.repo import Repo

    with _quiet_dvc(), Repo(str(root)) as repo:
        objects = set()
        for folder in folders:
            objects |= _cache_folder(repo, folder)
        reason = lock_mismatch(params, root)
        if reason is None:
            # core.autostage (set in .dvc/config) stages dvc.lock and .gitignore in git.
            with repo.scm_context(quiet=True):
                for stage in LOCKED_STAGES:
                    repo.commit(stage, force=True)
        out = {"dvc_lock": "recorded" if reason is None else f"not recorded: {reason}"}
        if not push:
            return {**out, "dvc": "stored in the DVC cache", "pushed": 0}
        # A model is only registered with data that the remote holds: a version whose data
        # exists in one machine's cache alone could not be restored anywhere else.
        try:
            sent = repo.cloud.push(objects)
        except Exception as exc:  # noqa: BLE001 — no remote, unreachable remote: say which
            raise DataRemoteError(
                f"DVC push failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); the data "
                "is in the local DVC cache only. Fix the remote (`dvc remote list`) and rerun"
            ) from exc
        if sent.failed:
            raise DataRemoteError(f"DVC push failed for {len(sent.failed)} object(s); the "
                                  "data is in the local DVC cache only")
        return {**out, "dvc": "stored and pushed to the default remote",
                "pushed": len(sent.transferred)}


def _cache_folder(repo: Any, folder: Path) -> set[Any]:
    """Put a folder's files into the DVC cache; returns the object ids to push."""
    from dvc_data.hashfile import load
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.transfer import transfer

    cache = repo.cache.local
    staging, _, obj = build(cache, str(folder.resolve()), repo.fs, "md5")
    transfer(staging, cache, {obj.hash_info}, shallow=False, hardlink=False)
    tree = load(cache, obj.hash_info)
    return {obj.hash_info} | {hash_info for _, _, hash_info in tree}


def lock_mismatch(params: Params, root: Path) -> str | None:
    """Why dvc.lock cannot record this run's ingest + prepare (None: it can)."""
    try:
        declared = load_params(root / "params.yaml")
    except ConfigError as exc:
        return f"params.yaml of the DVC project is invalid: {exc}"
    for stage in LOCKED_STAGES:
        for key in SPECS[stage].params:
            section = key.split(".")[0]
            if getattr(declared, section) != getattr(params, section):
                return (f"the run overrides `{section}` params, which dvc.lock would not show "
                        "(the data is stored and pushed by hash all the same)")
    for template in (LABELED, UNLABELED, "${paths.prepared}"):
        ours, theirs = resolve(template, params).resolve(), (root / resolve(template,
                                                                            declared)).resolve()
        if ours != theirs:
            return f"{template} is {ours}, dvc.yaml's is {theirs}"
    return None


def restore_data(params: Params, tags: dict[str, str], out_dir: str | Path, *,
                 force: bool = False) -> dict[str, Any]:
    """Fetch the folders a model version was made from into `out_dir`, from DVC alone.

    Writes `out_dir/input/labeled`, `out_dir/input/unlabeled` and `out_dir/prepared`
    (atomically) and checks each against the version's hash.

    Args:
        tags: the version's tags (input_version, unlabeled_version, data_version).
        force: replace `out_dir` even when it holds files (they are lost).

    Raises:
        DataVersionError: a hash tag is missing or not a DVC hash, `out_dir` holds files
            (without `force`), or the remote lacks an object.
    """
    from dvc.repo import Repo

    missing = [tag for tag, _ in VERSIONED if not tags.get(tag)]
    if missing:
        raise DataVersionError(f"the version has no {', '.join(missing)} tag: it was "
                               "registered before data versioning, nothing to restore")
    for tag, _ in VERSIONED:  # registry tags are data: never let one name a path
        if not DVC_HASH.fullmatch(tags[tag]):
            raise DataVersionError(f"the version's {tag} tag {tags[tag][:80]!r} is not a DVC "
                                   "md5 hash; refusing to use it")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise DataVersionError(f"{out} is not an empty folder: restoring would replace what "
                               "it holds; pick a new folder, or pass --force")
    root = dvc_root(Path.cwd()) or dvc_root(resolve("${paths.prepared}", params).parent)
    if root is None:
        raise DataVersionError("not inside a DVC project: run this in the project folder")
    layout = {"input_version": Path("input/labeled"),
              "unlabeled_version": Path("input/unlabeled"), "data_version": Path("prepared")}
    with _quiet_dvc(), Repo(str(root)) as repo, atomic_dir(out_dir) as tmp:
        for tag, _ in VERSIONED:
            _checkout(repo, tags[tag], tmp / layout[tag])
            got = data_version(tmp / layout[tag])
            if got != tags[tag]:
                raise DataVersionError(f"{layout[tag]}: restored hash {got} != {tags[tag]}")
    return {tag: {"hash": tags[tag], "path": str(Path(out_dir) / layout[tag])}
            for tag, _ in VERSIONED}


def _checkout(repo: Any, value: str, dst: Path) -> None:
    from dvc.fs import LocalFileSystem
    from dvc_data.hashfile import load
    from dvc_data.hashfile.checkout import checkout
    from dvc_data.hashfile.hash_info import HashInfo

    cache = repo.cache.local
    top = HashInfo("md5", value)
    if not cache.exists(value):
        _pull(repo, {top})
    tree = load(cache, top)
    _pull(repo, {hash_info for _, _, hash_info in tree
                 if not cache.exists(hash_info.value)})
    dst.mkdir(parents=True, exist_ok=True)
    checkout(str(dst), LocalFileSystem(), tree, cache, relink=True)


def _pull(repo: Any, objects: set[Any]) -> None:
    if not objects:
        return
    try:
        result = repo.cloud.pull(objects)
    except Exception as exc:  # noqa: BLE001 — no remote, unreachable remote: say which
        raise DataRemoteError(f"DVC pull failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]})") from exc
    if result.failed:
        raise DataRemoteError(f"the DVC remote lacks {len(result.failed)} object(s) "
                               f"(e.g. {next(iter(result.failed)).value}): was it pushed?")
