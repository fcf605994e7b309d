"""Render the kustomize overlays of deploy/k8s and run the validators on them.

kustomize: a standalone `kustomize` binary, else `kubectl kustomize` (kubectl ships
kustomize v5). kubernetes-validate is a dev extra of the project; checkov pins versions
that clash with the stack (networkx<2.7, packaging<24), so it lives in a venv of its own,
made on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import PROJECT_ROOT

K8S = PROJECT_ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
CHECKOV = "checkov==3.3.30"
CHECKOV_VENV = Path(os.environ.get("TUNELINE_CHECKOV_VENV", "/tmp/tuneline-checkov"))
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")


def kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.fail("neither kustomize nor kubectl is installed: the manifests cannot be "
                "rendered (install kubectl >= 1.27, which includes kustomize v5)")


def render(overlay: str | Path) -> list[dict[str, Any]]:
    """The objects of one overlay (a name under deploy/k8s/overlays, or a folder)."""
    folder = overlay if isinstance(overlay, Path) else K8S / "overlays" / overlay
    done = subprocess.run([*kustomize_command(), str(folder)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def kubernetes_validate():
    """The kubernetes_validate module; installed into this interpreter's env when missing."""
    try:
        import kubernetes_validate
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "kubernetes-validate>=1.31"],
                       check=True, timeout=300)
        import kubernetes_validate
    return kubernetes_validate


def checkov() -> Path:
    """The checkov executable of its own venv, created on first use."""
    exe = CHECKOV_VENV / "bin" / "checkov"
    version = CHECKOV.split("==")[1]
    if exe.exists():
        done = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                              timeout=120)
        if done.stdout.strip() == version:
            return exe
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(CHECKOV_VENV)], check=True,
                   timeout=120)
    subprocess.run([str(CHECKOV_VENV / "bin" / "pip"), "install", "-q",
                    "--disable-pip-version-check", CHECKOV], check=True, timeout=900)
    return exe


def run_checkov(folder: Path, skip: dict[str, str] | None = None) -> dict[str, Any]:
    """checkov's JSON report on the manifests in `folder` (no network: --skip-download)."""
    cmd = [str(checkov()), "--directory", str(folder), "--framework", "kubernetes",
           "--skip-download", "--output", "json"]
    if skip:
        cmd += ["--skip-check", ",".join(skip)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert done.returncode in (0, 1), done.stderr  # 1: some check failed
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def write_manifests(docs: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod (metadata + spec) a workload object runs."""
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels + matchExpressions) matches `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def config_data(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    """The data of the ConfigMap generated from `prefix` (kustomize appends a hash)."""
    found = [d for d in of_kind(docs, "ConfigMap")
             if d["metadata"]["name"].rsplit("-", 1)[0] == prefix]
    assert len(found) == 1, f"ConfigMap {prefix}-<hash>: {len(found)} found"
    return found[0]["data"]
