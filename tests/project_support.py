"""A fresh copy of the project (its tracked files, as a clone would have them) and commands
run in it the way a user runs them: the `tuneline` and `dvc` executables of this venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from components.config import PROJECT_ROOT, load_params

BIN = Path(sys.executable).parent


def clone_project(dst: Path) -> Path:
    """The tracked files of the working tree in a new git repository at `dst` (one commit)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = PROJECT_ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm",
                 "clone"]):
        subprocess.run(cmd, cwd=dst, check=True)
    return dst


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}


def run(repo: Path, *cmd: str, ok: bool = True, timeout: float = 900
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=repo, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    if ok:
        assert proc.returncode == 0, (f"{cmd} failed ({proc.returncode}):\n"
                                      f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def tiny_sets(backbone: Path) -> list[str]:
    """Overrides for a tiny random model whose gate judges structure, not quality."""
    return [f"model.name_or_path={backbone}", "model.max_length=32", "model.pooling=cls",
            "model.num_threads=1", "finetune.head_init=random",
            "finetune.freeze_embeddings=false", "finetune.batch_size=8",
            "finetune.max_steps=12", "finetune.eval_every=6", "finetune.checkpoint_every=6",
            "finetune.adamw.lr=3e-3", "export.latency_repeats=3",
            "gate.min_metrics.accuracy=0.0", "gate.min_metrics.macro_f1=0.0",
            "gate.int8_confident_probability=1.0", "gate.int8_max_accuracy_drop=1.0",
            "gate.max_logit_diff=1.0", "gate.max_latency_p95_ms=5000"]


def write_tiny_params(repo: Path, backbone: Path, extra: list[str] | None = None) -> None:
    """Bake the tiny overrides into the copy's params.yaml (what `dvc repro` reads)."""
    params = load_params(repo / "params.yaml", tiny_sets(backbone) + list(extra or []))
    (repo / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"),
                                                     sort_keys=False))


def set_param(repo: Path, key: str, value: object) -> None:
    """Edit one value of the copy's params.yaml, as a person would."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def dvc_changed(repo: Path) -> set[str]:
    """Stages `dvc status` would rerun for a reason other than `always_changed`."""
    out = run(repo, "dvc", "status", "--json").stdout.strip() or "{}"
    status = json.loads(out.splitlines()[-1])
    return {stage for stage, why in status.items() if any(w != "always changed" for w in why)}


def run_summary(repo: Path, *args: str) -> dict:
    """`tuneline run --json` in the copy; returns the run summary (its exit code too)."""
    proc = run(repo, str(BIN / "tuneline"), "run", *args, "--json", ok=False)
    assert proc.returncode in (0, 4), (f"tuneline run failed ({proc.returncode}):\n"
                                      f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout)
    # 4: the gate rejected the version, and only then
    assert (proc.returncode == 4) == (summary.get("gate_passed") is False), proc.stderr[-2000:]
    return {**summary, "exit_code": proc.returncode}
