"""`dvc repro` and `tuneline run` are two drivers of one pipeline: in a fresh copy of the
project, each recognises the other's outputs, and both rerun exactly the stages that read
a changed value (and what follows them), nothing else."""

from __future__ import annotations

import json

import pytest
import yaml

from components.config import load_params
from components.stages.spec import ORDER, SPECS, param_values, render_dvc_yaml
from tests.project_support import (
    clone_project,
    dvc_changed,
    run,
    run_summary,
    set_param,
    write_tiny_params,
)

TRAINING = {"prepare", "pretrain", "finetune", "export"}


def test_dvc_yaml_is_the_rendered_stage_table():
    from components.config import PROJECT_ROOT

    assert (PROJECT_ROOT / "dvc.yaml").read_text() == render_dvc_yaml()
    lock_free = yaml.safe_load(render_dvc_yaml())["stages"]
    assert list(lock_free) == list(ORDER)
    for name, stage in lock_free.items():
        assert stage["cmd"].split()[:2] == ["tuneline", name]  # the same stage functions
        assert not any(p.startswith("paths") for p in stage.get("params", []))


def test_every_declared_param_key_exists():
    params = load_params()
    for spec in SPECS.values():
        param_values(spec.params, params)   # raises KeyError on a typo


@pytest.mark.integration
@pytest.mark.slow
def test_dvc_repro_and_tuneline_run_agree_on_what_changed(tmp_path, tiny_backbone_dir):
    repo = clone_project(tmp_path / "repo")
    write_tiny_params(repo, tiny_backbone_dir)

    run(repo, "dvc", "repro")                        # the whole chain, up to the registry
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(ORDER)
    assert json.loads((repo / "metrics" / "register.json").read_text())["version"] == "1"
    assert dvc_changed(repo) == set()

    first = run_summary(repo)                        # DVC's outputs are current for the CLI
    assert first["status"] == "unchanged" and first["version"] == "1"

    set_param(repo, "evaluate.ece_bins", 10)         # read by evaluate and gate only
    assert dvc_changed(repo) == {"evaluate", "gate"}
    weights = repo / "artifacts" / "model" / "model.safetensors"
    trained_at = weights.stat().st_mtime_ns
    second = run_summary(repo)
    assert set(second["reused"]) >= TRAINING
    assert not {"evaluate", "gate", "register"} & set(second["reused"])
    assert second["version"] == "2" and weights.stat().st_mtime_ns == trained_at

    run(repo, "dvc", "repro")                        # DVC catches up on evaluate and gate
    assert weights.stat().st_mtime_ns == trained_at
    assert dvc_changed(repo) == set()

    set_param(repo, "serve.port", 8123)              # read by no stage
    assert dvc_changed(repo) == set()
    third = run_summary(repo)
    assert third["status"] == "unchanged" and third["version"] == "2"

    set_param(repo, "finetune.max_steps", 6)         # read by finetune (and by compress, whose
    assert dvc_changed(repo) == {"finetune", "compress"}  # student reuses the loop settings);
    #                                                  DVC reaches the rest through their outs
    fourth = run_summary(repo)
    assert {"ingest", "prepare", "pretrain"} <= set(fourth["reused"])
    assert not {"finetune", "evaluate", "export", "gate"} & set(fourth["reused"])
    assert fourth["version"] == "3" and fourth["steps"] == 6
