"""Registered versions are MLflow models: pyfunc from code, loadable without torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from components.data.files import load_split
from components.registry.mlflow_model import BUNDLE_SUBPATH
from components.registry.tracking import start_run, tracking_uri
from components.registry.versions import publish
from deploy.serve import create_app
from tests.model_support import tiny_test_params, trained_bundle
from tests.serve_support import running_server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}@champion")
out = model.predict(pd.DataFrame({"text": json.loads(sys.argv[3])}))
print(json.dumps({"labels": out["label"].tolist(), "scores": out["score"].tolist(),
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                  "predictor": sys.modules["components.release.predictor"].__file__}))
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_backbone_dir):
    """The tiny "good" model registered as @champion in a fresh SQLite store."""
    good = trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")
    root = tmp_path_factory.mktemp("mlflow-model")
    params = tiny_test_params(root, tiny_backbone_dir, ["serve.threads=1"])
    run_id = start_run(params, good["prepared"])
    publish(params, run_id, good["bundle"], {"passed": True, "reasons": []},
            prepared_dir=good["prepared"])
    texts, _ = load_split(good["prepared"], "test")
    return {"params": params, "root": root, "texts": texts + ["goal", "storm at sea", "loans"]}


def load_in_fresh_process(params, texts: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, tracking_uri(params),
         params.registry.model_name, json.dumps(texts)],
        capture_output=True, text=True, timeout=300, cwd=cwd)


def stored_model_dir(params) -> Path:
    return next(Path(params.registry.artifact_root).rglob("MLmodel")).parent


def test_champion_loads_without_torch_and_answers_like_the_server(registered):
    params, texts = registered["params"], registered["texts"]
    proc = load_in_fresh_process(params, texts, registered["root"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    pyfunc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert pyfunc["torch"] is False and pyfunc["transformers"] is False
    # the modules came with the model (its code folder), not from this checkout
    assert "/models/m-" in pyfunc["predictor"]  # the version's own LoggedModel folder
    assert pyfunc["predictor"].endswith("/artifacts/code/components/release/predictor.py")

    app = create_app(params, cache_dir=registered["root"] / "cache", api_token="")
    with running_server(app) as url:
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200)
        served = httpx.post(url + "/v1/predict", json={"texts": texts}).json()
    assert served["model_version"] == "1"
    assert pyfunc["labels"] == [p["label"] for p in served["predictions"]]
    assert pyfunc["scores"] == pytest.approx([p["score"] for p in served["predictions"]],
                                             abs=0.02)  # int8 scales follow the batch


def test_the_version_is_a_model_from_code_with_signature_and_example(registered):
    model_dir = stored_model_dir(registered["params"])
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert pyfunc["artifacts"]["bundle"]["path"] == BUNDLE_SUBPATH
    manifest = json.loads((model_dir / BUNDLE_SUBPATH / "manifest.json").read_text())
    assert pyfunc["config"]["sha256"] == manifest["files"]["model.int8.onnx"]
    assert json.loads(mlmodel["signature"]["inputs"]) == [
        {"type": "string", "name": "text", "required": True}]
    assert [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])] == [
        "label", "score", "scores"]
    example = json.loads((model_dir / "input_example.json").read_text())
    assert example["columns"] == ["text"] and len(example["data"]) >= 1
    assert not [p for p in model_dir.rglob("*") if p.suffix in (".pkl", ".pickle")]
    requirements = (model_dir / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "torch" not in requirements


def test_a_tampered_model_file_does_not_load(registered, tmp_path):
    params = registered["params"]
    stored = stored_model_dir(params) / BUNDLE_SUBPATH / "model.int8.onnx"
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + b"\x00")
    try:
        proc = load_in_fresh_process(params, ["goal"], tmp_path)
    finally:
        stored.write_bytes(original)
    assert proc.returncode != 0
    assert "sha256 mismatch for model.int8.onnx" in proc.stderr


def test_mlflow_models_serve_answers_like_the_pyfunc(registered, tmp_path):
    params, texts = registered["params"], registered["texts"][:4]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(params),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m",
         f"models:/{params.registry.model_name}@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not start"
            try:
                if httpx.get(url + "/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}
        resp = httpx.post(url + "/invocations", json=body, timeout=60)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    proc = load_in_fresh_process(params, texts, tmp_path)
    assert [p["label"] for p in preds] == json.loads(proc.stdout.strip().splitlines()[-1])[
        "labels"]
    assert set(preds[0]["scores"]) == {"sports", "weather", "finance"}


def test_the_model_ships_only_what_it_loads_and_never_the_project_root():
    """Loading a version re-imports its code folder's modules in the loading process; a
    shipped config.py would move PROJECT_ROOT (and every stage's code) for that process."""
    from components.registry.mlflow_model import model_code_files

    files = set(model_code_files())
    assert {"components/release/predictor.py", "components/task_types/sequence.py",
            "components/task_types/token.py", "components/task_types/tagging.py"} <= files
    assert "components/config.py" not in files
    assert not {f for f in files if f.startswith(("components/stages/", "components/train/"))}
