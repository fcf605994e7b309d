"""The demo corpus is real and deterministic; `dvc repro prepare` works in a fresh copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import PROJECT_ROOT, DemoConfig
from components.data_io import data_version
from components.demo import build_demo_corpus


def test_demo_corpus_is_large_varied_and_deterministic(tmp_path):
    meta = build_demo_corpus(tmp_path / "a", DemoConfig())
    build_demo_corpus(tmp_path / "b", DemoConfig())
    assert len(meta["families"]) >= 6
    assert meta["labeled_rows"] >= 1500
    assert min(meta["families"].values()) >= 100
    for name in ("labeled.jsonl", "unlabeled.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    docs = (tmp_path / "a" / "unlabeled.txt").read_text().splitlines()
    assert len(docs) >= meta["labeled_rows"]
    assert any("socket" in d for d in docs)  # real standard-library prose


def _copy_project(dst: Path) -> Path:
    """The tracked sources of the project, as a fresh clone would have them."""
    skip = {".git", ".venv", "data", "artifacts", "mlartifacts", "mlflow.db", ".dvc-storage",
            "__pycache__", ".pytest_cache", ".ruff_cache", "bench", "tests", ".prefect"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        dropped = {n for n in names if n in skip or n.endswith(".egg-info")}
        if Path(folder).name == ".dvc":
            dropped |= {"cache", "tmp"}
        return dropped

    shutil.copytree(PROJECT_ROOT, dst, ignore=ignore)
    return dst


@pytest.mark.integration
def test_dvc_repro_prepare_in_a_fresh_copy(tmp_path):
    repo = _copy_project(tmp_path / "repo")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    run("git", "init", "-q")
    run("dvc", "repro", "prepare")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = lock["stages"]["prepare"]["outs"][0]
    assert out["path"] == "data/prepared"
    assert out["md5"] == data_version(repo / "data" / "prepared")   # lineage hash == DVC's
    assert (repo / "data" / "prepared" / "train.jsonl").stat().st_size > 0

    assert "up to date" in run("dvc", "status", "prepare")           # no work twice
    run("dvc", "push")                                               # the local remote
    remote = repo / ".dvc-storage"
    assert any(p.is_file() for p in remote.rglob("*"))
    shutil.rmtree(repo / "data")
    run("dvc", "pull", "prepare")
    assert data_version(repo / "data" / "prepared") == out["md5"]


@pytest.mark.integration
@pytest.mark.slow
def test_dvc_repro_runs_the_whole_chain_in_a_fresh_copy(tmp_path, tiny_backbone_dir):
    from components.config import load_params

    repo = _copy_project(tmp_path / "repo")
    tiny = load_params(repo / "params.yaml", [
        f"model.name_or_path={tiny_backbone_dir}", "model.max_length=32",
        "finetune.max_steps=6", "finetune.eval_every=3", "finetune.checkpoint_every=3",
        "export.latency_repeats=3", "export.parity_max_rows=64"])
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny.model_dump(mode="json")))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], ["dvc", "repro"]):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) >= {"demo", "prepare", "pretrain", "finetune", "evaluate",
                                   "export"}
    assert (repo / "artifacts" / "export" / "model.int8.onnx").stat().st_size > 0
    assert json.loads((repo / "metrics" / "finetune.json").read_text())["steps"] == 6
    status = subprocess.run(["dvc", "status"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=300)
    assert "up to date" in status.stdout
