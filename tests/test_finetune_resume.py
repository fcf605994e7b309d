"""A fine-tune killed with SIGKILL mid-run and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.config import PROJECT_ROOT
from components.train.finetune import checkpoint as ckpt
from components.train.finetune import train
from tests.conftest import tiny_rows
from tests.test_modeling import _with

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _finetune_cmd(params_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from pipelines.cli import main; main()", "finetune",
            "--params", str(params_file), *extra]


def _kill_after_first_checkpoint(cmd: list[str], ck: Path, timeout: float = 300) -> int:
    """Start the run, SIGKILL it as soon as a checkpoint exists; return the checkpoint step."""
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ckpt.list_checkpoints(ck):
            if proc.poll() is not None:
                pytest.fail(f"training ended before its first checkpoint:\n{proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared in time")
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return int(ckpt.latest_checkpoint(ck).name.split("-")[1])


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_params, tmp_path):
    from mlflow import MlflowClient

    from components import stages

    # Enough steps after the first checkpoint that the kill lands mid-training. One
    # evaluation, at the end, so the saved weights are the final ones, not an earlier best
    # that a resume could match by accident.
    params = _with(tiny_params, **{"finetune.max_steps": 80, "finetune.eval_every": 80,
                                   "finetune.checkpoint_every": 10})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    params.paths.raw.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()))
    stages.ingest(params)
    stages.prepare(params)

    reference = train(params, params.paths.prepared, tmp_path / "ref",
                      checkpoint_dir=tmp_path / "ck-ref")

    ck, out = params.paths.checkpoints, params.paths.model
    metrics = params.paths.metrics / "finetune.json"
    killed_at = _kill_after_first_checkpoint(_finetune_cmd(params_file), ck)
    assert 10 <= killed_at < 80 and not out.exists() and not metrics.exists()

    done = subprocess.run(_finetune_cmd(params_file, "--resume"), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads(metrics.read_text())
    assert resumed["resumed_from"] == killed_at
    for key in ("val_accuracy", "val_loss", "val_macro_f1", "best_step", "steps"):
        assert resumed[key] == reference[key], key
    ref_w = load_file(str(tmp_path / "ref" / "model.safetensors"))
    new_w = load_file(str(out / "model.safetensors"))
    assert ref_w.keys() == new_w.keys()
    assert all(torch.equal(ref_w[k], new_w[k]) for k in ref_w)
    # One MLflow run for the whole training: the resumed part logs where the killed one did.
    client = MlflowClient(params.registry.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("tuneline").experiment_id])
    assert run.info.run_id == resumed["mlflow_run_id"] and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(set(steps)) == list(range(1, 81))


def test_resume_refuses_a_checkpoint_from_other_params(tiny_params, tiny_prepared, tmp_path):
    params = _with(tiny_params, **{"finetune.max_steps": 10, "finetune.checkpoint_every": 5})
    train(params, tiny_prepared, tmp_path / "m", checkpoint_dir=tmp_path / "ck")
    other = _with(params, **{"finetune.adamw.lr": 1e-3})
    with pytest.raises(ValueError, match="different params"):
        train(other, tiny_prepared, tmp_path / "m2", checkpoint_dir=tmp_path / "ck", resume=True)
