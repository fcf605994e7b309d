"""A person moves @champion in MLflow's own UI; a running server follows.

A real `mlflow server` (the command `tuneline ui` runs) over a SQLite registry, a real
`tuneline serve` process that reads the registry through that server, clients predicting
all along. The alias is moved with the request MLflow's UI sends
(POST /ajax-api/2.0/mlflow/registered-models/alias). The server must notice within
`serve.reload_interval_s` and swap without one failed request.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from components.config import load_params
from tests.conftest import TINY_LABELS
from tests.prefect_support import (
    BIN,
    SERVER_TIMEOUT_S,
    MlflowREST,
    Proc,
    base_env,
    free_port,
    running,
    wait_for,
)
from tests.serve_support import export_tiny_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RELOAD_S = 2.0
TEXTS = ["the team scored a late goal", "heavy rain and wind tonight"]


def test_champion_moved_in_mlflow_ui_is_followed_without_a_failed_request(tmp_path,
                                                                          tokenizer_dir):
    from components.registry.tracking import start_run
    from components.registry.versions import publish
    from pipelines.ui import mlflow_command

    sets = [f"registry.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"registry.artifact_root={tmp_path}/mlartifacts", f"serve.reload_interval_s={RELOAD_S}",
            "serve.threads=1", "serve.max_batch=8"]
    params = load_params(overrides=sets)
    for seed, passed in ((1, True), (2, False)):  # v1 @champion, v2 @challenger
        bundle = export_tiny_bundle(tmp_path / f"b{seed}", tokenizer_dir, TINY_LABELS, seed)
        publish(params, start_run(params, None), bundle, {"passed": passed, "reasons": ["-"]})

    mlflow_port, serve_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as work:
        cmd, env = mlflow_command(params, mlflow_port, None, Path(work))
        server = Proc(cmd, {**env, **base_env(tmp_path)}, tmp_path, tmp_path / "mlflow.log")
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        serve_env = base_env(tmp_path, MLFLOW_TRACKING_URI=mlflow_url)
        serve_env.pop("TUNELINE_API_TOKEN", None)
        serving = Proc([str(BIN / "tuneline"), "serve", "--port", str(serve_port),
                        "--cache-dir", str(tmp_path / "cache"),
                        *[a for s in sets for a in ("--set", s)]],
                       serve_env, tmp_path, tmp_path / "serve.log")
        url = f"http://127.0.0.1:{serve_port}"
        with running(server, serving):
            wait_for(lambda: _version(url) == "1", SERVER_TIMEOUT_S,
                     "the server to serve v1 from the MLflow server", [server, serving])
            results: list[tuple[int, str | None]] = []
            stop = threading.Event()
            clients = [threading.Thread(target=_predict_until, args=(url, stop, results))
                       for _ in range(3)]
            for c in clients:
                c.start()
            try:
                wait_for(lambda: len(results) > 20, 60, "requests", [serving])
                mlflow = MlflowREST(mlflow_url)
                moved_at = time.time()
                assert mlflow.set_alias(params.registry.model_name, "champion", "2"
                                        ).status_code == 200
                wait_for(lambda: _version(url) == "2", 60, "the swap", [serving],
                         interval=0.05)
                swapped_at = time.time()
                time.sleep(1)
            finally:
                stop.set()
                for c in clients:
                    c.join(30)
            log = (tmp_path / "serve.log").read_text()

    assert {status for status, _ in results} == {200}, "requests failed during the swap"
    assert {version for _, version in results} == {"1", "2"}
    load_s = float(re.search(r"serving version 2 .* after ([\d.]+)s load", log).group(1))
    noticed_after = swapped_at - moved_at - load_s
    print(f"alias moved -> noticed {noticed_after:.2f} s (+ {load_s:.2f} s load); "
          f"reload_interval_s {RELOAD_S}; {len(results)} requests, none failed")
    assert noticed_after <= RELOAD_S + 0.5  # one polling interval (+ scheduling jitter)


def _version(url: str) -> str | None:
    try:
        return httpx.get(url + "/readyz", timeout=5).json().get("model_version")
    except (httpx.HTTPError, ValueError):
        return None


def _predict_until(url: str, stop: threading.Event, out: list) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            r = client.post(url + "/v1/predict", json={"texts": TEXTS})
            out.append((r.status_code,
                        r.json().get("model_version") if r.status_code == 200 else None))
