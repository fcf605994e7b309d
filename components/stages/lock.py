"""One process at a time writes a project folder: an fcntl lock around every stage.

`tuneline run`, a single stage verb and `dvc repro` (which runs the verbs) all reach the
stage functions, and every stage function takes the project lock (`paths.lock`) before it
checks its inputs and writes its output. Without it, one process could write its stage
record over another process's output, which would then look current and be registered.
The lock is re-entrant within a process, so a run that holds it for its whole length
(the retrain flow does) calls its stages without waiting on itself. A second process
does not wait: it stops at once with `ProjectBusy`, naming the holder (the way DVC treats
its own lock).

An fcntl lock dies with its process, so a killed run never leaves the project locked.
What a killed run can leave is a temp file or folder of an output it was writing
(`.NAME.PID.XXXX.tmp`, `.NAME.old-PID`, see components/io.py); whoever takes the lock next
removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from components.config import Params
from components.io import leftover_owner

# The output folders a stage writes (their parents hold the temp folders).
OUTPUT_PATHS = ("input", "prepared", "pretrained", "model", "compressed", "checkpoints",
                "eval", "export", "gate", "metrics")

_held: dict[Path, tuple[int, int]] = {}  # lock path -> (file descriptor, depth)
_guard = threading.Lock()


class ProjectBusy(RuntimeError):
    """Another process holds the project lock."""


def lock_path(params: Params) -> Path:
    return Path(params.paths.lock).resolve()


@contextlib.contextmanager
def project_lock(params: Params) -> Iterator[None]:
    """Hold the project lock for the block (re-entrant within this process).

    Raises:
        ProjectBusy: another process holds it; the message names that process.
    """
    path = lock_path(params)
    with _guard:
        fd, depth = _held.get(path, (-1, 0))
        if depth == 0:
            fd = _acquire(path)
            _held[path] = (fd, 1)
        else:
            _held[path] = (fd, depth + 1)
    if depth == 0:
        remove_leftovers(params)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held[path]
            if depth == 1:
                del _held[path]
                os.close(fd)  # closing the descriptor releases the lock
            else:
                _held[path] = (fd, depth - 1)


def _acquire(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _describe_holder(fd)
        os.close(fd)
        raise ProjectBusy(f"another tuneline process ({holder}) is writing this project "
                          f"(lock {path}); wait for it to finish, or run in another "
                          "folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)[:500]})
              .encode(), 0)
    return fd


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return "holder unknown"
    return f"pid {info.get('pid', '?')}: {info.get('command', '?')}"


def remove_leftovers(params: Params) -> list[Path]:
    """Delete the temp files and folders that dead processes left beside or in the outputs.

    Returns what was removed.
    """
    folders = set()
    for key in OUTPUT_PATHS:
        out = Path(getattr(params.paths, key))
        folders.update((out.parent, out))
    removed = []
    for folder in sorted(folders):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            pid = leftover_owner(entry.name)
            if pid is None or _alive(pid):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
