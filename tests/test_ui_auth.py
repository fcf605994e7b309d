"""`tuneline ui --auth`: both servers locked, everything of ours let in with the same
credentials, taken from the environment.

Against the real servers `tuneline ui --auth` starts: without credentials (or with wrong
ones) the Prefect and MLflow APIs answer 401. With them, the whole loop works: the runner
registers the deployments, `tuneline ingest FILE --notify` announces new data, the trigger
starts a retrain whose flow run logs to MLflow through the locked server, the `watch-data`
sensor reads the champion from it, and `tuneline serve` loads the champion from it.
"""

from __future__ import annotations

import secrets
import subprocess

import httpx
import pytest

from tests.prefect_support import (
    BIN,
    SERVER_TIMEOUT_S,
    MlflowREST,
    PrefectAPI,
    Proc,
    base_env,
    free_port,
    running,
    start_tuneline_ui,
    wait_for,
    write_tiny_project,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tuneline-classifier"


def test_locked_servers_refuse_strangers_and_serve_our_processes(tmp_path, tiny_backbone_dir):
    password = secrets.token_hex(8)
    creds = {"PREFECT_API_AUTH_STRING": f"ops:{password}", "MLFLOW_TRACKING_USERNAME": "ops",
             "MLFLOW_TRACKING_PASSWORD": password}
    params_file = write_tiny_project(tmp_path, tiny_backbone_dir)
    missing = subprocess.run([str(BIN / "tuneline"), "ui", "--auth", "--params",
                              str(params_file)], env=base_env(tmp_path), capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2 and "PREFECT_API_AUTH_STRING" in missing.stderr

    ui, prefect_port, mlflow_port = start_tuneline_ui(
        tmp_path, params_file, base_env(tmp_path, **creds), "--auth")
    prefect_url, mlflow_url = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    api = PrefectAPI(f"{prefect_url}/api", auth=("ops", password))
    mlflow = MlflowREST(mlflow_url, auth=("ops", password))
    ours = base_env(tmp_path, PREFECT_API_URL=f"{prefect_url}/api",
                    MLFLOW_TRACKING_URI=mlflow_url, **creds)
    with running(ui):
        wait_for(lambda: api.deployment("rollback"), SERVER_TIMEOUT_S,
                 "the locked servers and the deployments (the runner got in)", [ui])
        settings = httpx.get(f"{prefect_url}/ui-settings").json()
        assert settings["api_url"] == f"{prefect_url}/api" and settings["auth"] == "BASIC"

        # Strangers: no credentials, or wrong ones.
        for auth in (None, ("ops", "guess")):
            assert httpx.post(f"{prefect_url}/api/flow_runs/filter", json={}, auth=auth
                              ).status_code == 401
            assert httpx.get(f"{mlflow_url}/api/2.0/mlflow/registered-models/search",
                             auth=auth).status_code == 401
        assert mlflow.http.get("/api/2.0/mlflow/registered-models/search").status_code == 200

        # New data announced with the credentials -> the trigger -> a retrain that logs to
        # MLflow through the locked server.
        announce = subprocess.run([str(BIN / "tuneline"), "ingest", str(tmp_path / "raw.jsonl"),
                                   "--notify", "--params", str(params_file)], env=ours,
                                  cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert announce.returncode == 0, announce.stderr
        (run,) = wait_for(lambda: api.flow_runs("retrain") and [
            r for r in api.flow_runs("retrain") if not r["auto_scheduled"]], 120,
            "the triggered retrain", [ui])
        done = api.wait_final(run["id"], 900, [ui])
        assert done["state"]["type"] == "COMPLETED", ui.tail(6000)
        assert mlflow.aliases(MODEL) == {"champion": "1"}
        assert mlflow.tags(MODEL, "1")["raw_data_hash"]

        # The sensor reads the champion's data hash through the locked server: unchanged.
        sensor = api.create_run("watch-data", {})
        assert api.wait_final(sensor["id"], 300, [ui])["state"]["type"] == "COMPLETED"
        assert [e["payload"]["source"] for e in api.events("tuneline.data.changed")] == [
            "tuneline ingest"]

        # The serving process loads the champion through the locked server.
        port = free_port()
        serving = Proc([str(BIN / "tuneline"), "serve", "--params", str(params_file), "--port",
                        str(port), "--cache-dir", str(tmp_path / "serve-cache")],
                       ours, tmp_path, tmp_path / "serve.log")
        with running(serving):
            ready = wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), SERVER_TIMEOUT_S,
                             "the serving process to load @champion", [serving, ui])
        assert ready["model_version"] == "1"

        # A tuneline command without the credentials is refused by MLflow.
        stranger = {k: v for k, v in ours.items() if k not in creds}
        refused = subprocess.run([str(BIN / "tuneline"), "models", "--params", str(params_file)],
                                 env=stranger, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 6 and "401" in refused.stderr, refused.stderr  # SERVICE


def _ready(url: str) -> dict | None:
    try:
        body = httpx.get(url + "/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if body.get("ready") else None
