"""The serving image and manifests: torch-free imports, files copied, probes, entry point."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_LABELS
from tests.k8s_support import one, render
from tests.serve_support import export_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tokenizer_dir) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("deploy") / "bundle", tokenizer_dir,
                              TINY_LABELS, seed=4)


def loaded_modules_when_serving(bundle: Path) -> list[str]:
    """Modules a fresh interpreter has loaded after building the app and predicting."""
    code = f"""
import json, sys
from components.config import load_params
from components.release.predictor import OnnxClassifier
import components.registry.versions, deploy.serve.__main__
from deploy.serve import create_app
create_app(load_params(), bundle_dir={str(bundle)!r})
OnnxClassifier({str(bundle)!r}).predict(["hello"])
print(json.dumps(sorted(sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_serving_path_is_torch_free_and_fits_in_the_image(bundle):
    modules = loaded_modules_when_serving(bundle)
    heavy = [m for m in modules if m.split(".")[0] in {"torch", "transformers", "peft"}]
    assert not heavy, heavy[:10]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY components/(\w+) ", dockerfile, re.M))
    copied |= set(re.findall(r"components/(\w+)\.py", dockerfile))
    needed = {m.split(".")[1] for m in modules if m.startswith("components.")}
    assert needed <= copied, f"the image misses components {sorted(needed - copied)}"
    lines = (DEPLOY / "requirements-serve.txt").read_text().lower().splitlines()
    packages = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert not [p for p in packages if p.startswith(("torch", "transformers"))], packages


def test_k8s_probes_point_at_the_app_routes(tmp_path, bundle):
    from components.config import load_params
    from deploy.serve import create_app

    docs = render("prod")
    deployment = one(docs, "Deployment", "tuneline-serve")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    routes = {r.path for r in create_app(load_params(), bundle_dir=bundle).routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    service = one(docs, "Service", "tuneline-serve")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_k8s_probes_see_a_stuck_batch_and_the_token_is_required():
    deployment = one(render("prod"), "Deployment", "tuneline-serve")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    live, ready = container["livenessProbe"], container["readinessProbe"]
    # both routes answer 503 while a batch runs past serve.stuck_batch_s
    assert (live["httpGet"]["path"], ready["httpGet"]["path"]) == ("/healthz", "/readyz")

    def seconds(probe):
        return probe["periodSeconds"] * probe["failureThreshold"]

    assert seconds(ready) < seconds(live), "a stuck pod leaves the Service before it restarts"
    # the image listens on 0.0.0.0: without a token it would refuse to start
    token = next(e for e in container["env"] if e["name"] == "TUNELINE_API_TOKEN")
    assert not token["valueFrom"]["secretKeyRef"].get("optional", False)
    assert "--insecure" not in container.get("args", [])
    entry = (DEPLOY / "Dockerfile").read_text().split("ENTRYPOINT", 1)[1]
    assert '"0.0.0.0"' in entry and "--insecure" not in entry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_container_entry_point_serves_a_bundle(bundle):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.serve", "--bundle", str(bundle), "--host", "127.0.0.1",
         "--port", str(port), "--set", "serve.threads=1", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "server did not become ready"
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        resp = httpx.post(url + "/v1/predict", json={"texts": ["a goal in the last minute"]})
        assert resp.status_code == 200
        assert resp.json()["predictions"][0]["label"] in TINY_LABELS
    finally:
        proc.terminate()
        proc.wait(30)


def test_entry_point_rejects_bad_params():
    proc = subprocess.run([sys.executable, "-m", "deploy.serve", "--set", "serve.port=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "serve.port" in proc.stderr


def test_tuneline_cli_stays_torch_free_until_a_command_needs_it():
    """`tuneline serve` runs in the CLI process: importing the CLI must not pull in torch."""
    code = ("import sys, pipelines.cli\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
