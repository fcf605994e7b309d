"""One process at a time writes a project: a second one is refused while a stage runs; a
stage's output and its record appear in one rename; a killed stage leaves only a temp
folder, which the next process to take the lock removes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components import stages
from components.config import PROJECT_ROOT, load_params
from components.stages.base import stored_result
from components.stages.lock import ProjectBusy, project_lock
from components.stages.spec import FINGERPRINT_FILE, fingerprint
from tests.conftest import tiny_overrides, tiny_rows

CLI = [sys.executable, "-c", "from pipelines.cli import main; main()"]


def _project(tmp_path: Path, backbone: Path, *extra: str):
    params = load_params(overrides=tiny_overrides(tmp_path, backbone) + [
        "model.num_threads=1", *extra])
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return params, params_file


def test_the_lock_is_reentrant_within_a_process_and_refuses_another(tiny_params):
    probe = ("import sys; from components.config import load_params; "
             "from components.stages.lock import project_lock, ProjectBusy\n"
             "try:\n    project_lock(load_params(overrides=sys.argv[1:])).__enter__()\n"
             "except ProjectBusy as exc:\n    print(exc); sys.exit(5)\n")
    sets = [f"paths.lock={tiny_params.paths.lock}"]
    with project_lock(tiny_params), project_lock(tiny_params):  # the same process: re-entrant
        other = subprocess.run([sys.executable, "-c", probe, *sets], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 5 and f"pid {os.getpid()}" in other.stdout
    free = subprocess.run([sys.executable, "-c", probe, *sets], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert free.returncode == 0, free.stdout + free.stderr


def test_a_failed_stage_leaves_neither_output_nor_record(tiny_params):
    params = tiny_params
    params.paths.raw.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()))
    stages.ingest(params)
    first = stages.prepare(params)
    before = {p.name: p.read_bytes() for p in Path(params.paths.prepared).iterdir()}

    from components.stages.base import run_stage

    def half_written(out: Path) -> dict:
        (out / "train.jsonl").write_text("half\n")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_stage("prepare", params, half_written, str, force=True)
    after = {p.name: p.read_bytes() for p in Path(params.paths.prepared).iterdir()}
    assert after == before            # the old output and its record, untouched
    assert stored_result(Path(params.paths.prepared), first.fingerprint) is not None
    assert not [p for p in Path(params.paths.prepared).parent.iterdir()
                if p.name.startswith(".prepared.")]


@pytest.mark.slow
@pytest.mark.integration
def test_a_second_process_is_refused_and_a_killed_stage_is_cleaned_up(tmp_path,
                                                                      tiny_backbone_dir):
    params, params_file = _project(tmp_path, tiny_backbone_dir, "finetune.max_steps=100000",
                                   "finetune.eval_every=100000",
                                   "finetune.checkpoint_every=100000")
    stages.ingest(params)
    stages.prepare(params)
    model = Path(params.paths.model)
    trainer = subprocess.Popen([*CLI, "finetune", "--params", str(params_file)],
                               cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        staging = []
        while not staging:  # the stage is writing into its temp folder
            assert trainer.poll() is None and time.monotonic() < deadline
            staging = [p for p in model.parent.iterdir()
                       if p.name.startswith(f".model.{trainer.pid}.")]
            time.sleep(0.1)
        busy = subprocess.run([*CLI, "prepare", "--force", "--params", str(params_file)],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert busy.returncode == 5, busy.stderr[-2000:]
        assert f"pid {trainer.pid}" in busy.stderr and "finetune" in busy.stderr
        with pytest.raises(ProjectBusy):
            stages.prepare(params, force=True)  # in this process too
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(60)
    assert staging[0].exists() and not model.exists()    # nothing half-written is current

    after = subprocess.run([*CLI, "prepare", "--params", str(params_file)], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]    # the dead holder freed the lock
    assert not staging[0].exists()                        # and its leftover is gone
    assert not (model / FINGERPRINT_FILE).exists()
    assert stored_result(model, fingerprint("finetune", params)) is None
