"""Where a model came from: code version, data version, params, and stage fingerprints.

A stage fingerprint is a hash of everything that decides a stage's output: the stage
name, the hash of its input data, the params sections it reads, and the code version.
Each stage writes its fingerprint into its output folder; a later run with the same
fingerprint and the output still on disk has nothing to do (no work twice).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from components.config import PROJECT_ROOT
from components.io import atomic_write_json

FINGERPRINT_FILE = "fingerprint.json"
# The code whose change must retrain: every component and the params schema.
CODE_DIRS = ("components",)


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


def code_version(root: Path = PROJECT_ROOT) -> str:
    """Hash of the component sources: changes when training code changes, git or not."""
    h = hashlib.sha256()
    for folder in CODE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(stage: str, **inputs: Any) -> str:
    """Stable hash of a stage name and its inputs (strings, numbers, dicts of them)."""
    blob = json.dumps({"stage": stage, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def is_current(out_dir: str | Path, expected: str) -> bool:
    """True when `out_dir` holds the output of a run with fingerprint `expected`."""
    path = Path(out_dir) / FINGERPRINT_FILE
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("fingerprint") == expected
    except (json.JSONDecodeError, AttributeError):
        return False


def mark_current(out_dir: str | Path, value: str, **details: Any) -> None:
    """Record in `out_dir` the fingerprint of the run that produced it."""
    atomic_write_json(Path(out_dir) / FINGERPRINT_FILE, {"fingerprint": value, **details})
