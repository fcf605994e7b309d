"""Stage `ingest`: the exact bytes of the inputs, copied into the project to be versioned.

`paths.raw` (the labeled file, anywhere on disk; `--input` sets it) is copied to
`<paths.input>/labeled/labeled.<ext>` and `paths.unlabeled` (when set) to
`<paths.input>/unlabeled/unlabeled.<ext>`; each file's bytes are read once, the copy and
its md5 made from the same read. The labeled copy is validated in full before it replaces
the previous one: a file that `prepare` would reject (or one over `data.max_bytes` /
`data.max_rows`) changes nothing. Those two folders are what DVC versions and
what every later stage reads, so a model can be traced to the bytes it learned from,
whatever the path they came from. When `paths.raw` points into the demo corpus folder and
the corpus is missing (or was built with other `demo` settings), it is built first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.config import Params
from components.data.files import DataValidationError, input_format, md5_file
from components.data.streaming import check_size
from components.io import atomic_dir, read_json
from components.stages.base import StageResult, write_metrics
from components.stages.chain import snapshot_versions
from components.stages.spec import LABELED, UNLABELED, fingerprint, resolve

log = logging.getLogger("tuneline.stages")
UNLABELED_FORMATS = (".txt", ".jsonl", ".json")


def ingest(params: Params) -> StageResult:
    """Validate the inputs and copy them into `paths.input`; a no-op when already there.

    Raises:
        DataValidationError: the labeled file is missing, has an unsupported format, lacks
            a column, or fails validation; or the unlabeled file is missing or not text.
    """
    from components.task_types import task_type

    started = time.perf_counter()
    raw = ensure_demo(params)
    input_format(raw)
    check_size(raw, params.data)
    unlabeled = params.paths.unlabeled
    if unlabeled is not None:
        _check_unlabeled(Path(unlabeled))
    labeled_dir, unlabeled_dir = resolve(LABELED, params), resolve(UNLABELED, params)
    checked: list[Any] = []

    def check(copy: Path) -> None:  # validate the fresh copy; errors name the user's file
        try:
            checked.append(task_type(params.task.type).check(copy, params.data))
        except DataValidationError as exc:
            raise DataValidationError(str(exc).replace(str(copy), str(raw))) from None

    copied = [_snapshot(raw, labeled_dir, "labeled", check),
              _snapshot(unlabeled, unlabeled_dir, "unlabeled")]
    result = {"source": str(raw),
              "unlabeled_source": str(unlabeled) if unlabeled else None,
              "rows_in": checked[0].rows_in, "rows_ok": checked[0].rows_ok,
              "copied": [name for name, done in zip(("labeled", "unlabeled"), copied,
                                                    strict=True) if done],
              **snapshot_versions(params)}
    write_metrics("ingest", params, result)
    what = ", ".join(result["copied"]) or "nothing (unchanged)"
    summary = (f"{raw} ({result['rows_in']} rows, {result['rows_ok']} valid) -> "
               f"{labeled_dir}; copied {what}")
    log.info("ingest: %s", summary)
    return StageResult("ingest", fingerprint("ingest", params), not any(copied), labeled_dir,
                       result, summary, time.perf_counter() - started)


def check_inputs(params: Params) -> tuple[Path, Any]:
    """Read and validate the inputs without writing anything but the demo corpus.

    Returns:
        (the labeled file, its CheckedDataset)

    Raises:
        DataValidationError: see `ingest`.
    """
    from components.task_types import task_type

    raw = ensure_demo(params)
    input_format(raw)
    check_size(raw, params.data)
    checked = task_type(params.task.type).check(raw, params.data)
    if params.paths.unlabeled is not None:
        _check_unlabeled(Path(params.paths.unlabeled))
    return raw, checked


def ensure_demo(params: Params) -> Path:
    """`paths.raw`, building the demo corpus first when it points there and is stale."""
    from components.data.demo import CORPUS_FORMAT, build_demo_corpus

    raw = Path(params.paths.raw)
    corpus = Path(params.paths.corpus)
    if raw.parent.resolve() != corpus.resolve():
        return raw
    meta = corpus / "corpus.json"
    stored = read_json(meta) if meta.exists() else {}
    current = (stored.get("config") == params.demo.model_dump()
               and stored.get("format") == CORPUS_FORMAT)
    if not raw.exists() or not current:
        log.info("building the demo corpus in %s", corpus)
        build_demo_corpus(corpus, params.demo)
    return raw


def _check_unlabeled(path: Path) -> None:
    if not path.is_file():
        raise DataValidationError(f"paths.unlabeled: {path} is not a file")
    if path.suffix.lower() not in UNLABELED_FORMATS:
        raise DataValidationError(f"paths.unlabeled: {path}: unsupported extension "
                                  f"{path.suffix!r}; use one of {list(UNLABELED_FORMATS)}")


def _snapshot(source: Path | None, folder: Path, stem: str,
              check: Callable[[Path], None] | None = None) -> bool:
    """Make `folder` hold exactly a copy of `source` (or nothing); True when it changed.

    The source is read once: the copy (in a temp folder) and its md5 come from the same
    read. `check(copy)` runs on the copy before anything replaces `folder`; the old copy is
    read only when the sizes match.
    """
    wanted = f"{stem}{source.suffix.lower()}" if source is not None else None
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    same_names = present is not None and present == ([wanted] if wanted else [])
    if source is None:
        if same_names:
            return False
        with atomic_dir(folder):
            return True
    new_parent = not folder.parent.exists()
    try:
        with atomic_dir(folder) as tmp:
            digest = copy_with_md5(source, tmp / wanted)
            if check is not None:
                check(tmp / wanted)
            old = folder / wanted
            if (same_names and old.stat().st_size == (tmp / wanted).stat().st_size
                    and md5_file(old) == digest):
                raise _Unchanged  # leaves the folder as it is; the temp folder goes
    except _Unchanged:
        return False
    except BaseException:
        if new_parent:  # a refused input leaves no trace, not even an empty folder
            with contextlib.suppress(OSError):
                folder.parent.rmdir()
        raise
    return True


class _Unchanged(Exception):
    """Raised inside `atomic_dir` to leave the folder untouched."""


def copy_with_md5(source: Path, dest: Path) -> str:
    """Copy `source` to `dest` and return the md5 of its bytes, reading them once."""
    h = hashlib.md5()
    with open(source, "rb") as src, open(dest, "wb") as out:
        while block := src.read(1 << 22):
            h.update(block)
            out.write(block)
    return h.hexdigest()

