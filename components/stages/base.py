"""The skeleton every stage function shares: lock, skip when current, record, report.

A stage function takes the project lock (components/stages/lock.py) and computes its
fingerprint (components/stages/spec.py); when its output folder already holds a record
with that fingerprint, the stored result is returned and nothing runs. Otherwise it writes
its output into a temp folder beside the output, the record (fingerprint + result) into
the same temp folder, and the temp folder replaces the output in one rename: output and
record appear together or not at all. Every call also writes the result to
`<paths.metrics>/<stage>.json` for `dvc metrics show`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import Params
from components.io import atomic_dir, atomic_write_json, read_json
from components.stages.lock import project_lock
from components.stages.spec import FINGERPRINT_FILE, SPECS, fingerprint, output_dir, resolve

log = logging.getLogger("tuneline.stages")
# Stages whose output has no record to check (ingest keeps exact copies of its sources).
SOURCE_STAGES = ("ingest",)


class StaleInputError(RuntimeError):
    """An input folder was made from other inputs than the current params describe."""


@dataclass(frozen=True)
class StageResult:
    """What one stage call did.

    Attributes:
        stage: the stage name.
        fingerprint: hash of everything that decided the output.
        reused: True when the output already held this fingerprint's result (nothing ran).
        output: the stage's output folder (None for stages that write only elsewhere).
        result: the stage's numbers and facts (JSON-serialisable).
        summary: one line for people.
        seconds: wall time of the call.
    """

    stage: str
    fingerprint: str
    reused: bool
    output: Path | None
    result: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    seconds: float = 0.0

    def __getitem__(self, key: str) -> Any:
        return self.result[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.result.get(key, default)


def stored_result(out: Path, fp: str) -> dict[str, Any] | None:
    """The result recorded in `out` for fingerprint `fp`, or None when `out` is not current."""
    path = Path(out) / FINGERPRINT_FILE
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fp:
        return None
    return record.get("result", {})


def record(out: Path, fp: str, result: dict[str, Any]) -> None:
    atomic_write_json(Path(out) / FINGERPRINT_FILE, {"fingerprint": fp, "result": result})


def write_metrics(name: str, params: Params, result: dict[str, Any]) -> None:
    atomic_write_json(Path(params.paths.metrics) / f"{name}.json", result)


def run_stage(name: str, params: Params, compute: Callable[[Path], dict[str, Any]],
              describe: Callable[[dict[str, Any]], str], *, force: bool = False,
              runtime: dict[str, Any] | None = None) -> StageResult:
    """Run `compute` unless the stage's output already holds this fingerprint's result.

    Args:
        name: the stage (a key of SPECS).
        compute: writes the stage's output into the folder it is given (a temp folder that
            then replaces the output folder) and returns the result dict.
        describe: result -> one line for people.
        force: run even when current.
        runtime: inputs only the caller knows (see `spec.fingerprint`).

    Raises:
        ProjectBusy: another process holds the project lock.
    """
    started = time.perf_counter()
    with project_lock(params):
        check_inputs_current(name, params)
        fp = fingerprint(name, params, runtime)
        out = output_dir(name, params)
        stored = None if force else stored_result(out, fp)
        if stored is not None:
            result, reused = stored, True
        else:
            with atomic_dir(out) as staging:
                result = compute(staging)
                record(staging, fp, result)
            reused = False
        write_metrics(name, params, result)
    summary = describe(result)
    log.info("%s: %s%s", name, f"up to date in {out} ({fp}): " if reused else "", summary)
    return StageResult(name, fp, reused, out, result, summary, time.perf_counter() - started)


def check_inputs_current(name: str, params: Params) -> None:
    """Refuse to build on an input whose producing stage is not current for these params.

    Without this, `tuneline export` after a change to `finetune.*` (and no retraining)
    would export the old model under the new chain's fingerprint.

    Raises:
        StaleInputError: naming the input and the stage to run first.
    """
    for dep in SPECS[name].active_deps(params):
        if not dep.identity or dep.stage in SOURCE_STAGES or SPECS[dep.stage].is_off(params):
            continue  # a switched-off stage's marker is never read
        folder = resolve(dep.path, params)
        if stored_result(folder, fingerprint(dep.stage, params)) is None:
            state = ("is missing" if not folder.exists()
                     else "was made from other inputs than these params describe")
            raise StaleInputError(f"{name}: {folder} {state}; run `tuneline {dep.stage}` "
                                  "first (or `tuneline run`)")
