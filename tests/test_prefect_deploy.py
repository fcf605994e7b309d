"""A real Prefect server on 127.0.0.1, the served deployments, and a run triggered
through the API with a non-default parameter that must reach Completed; the sweep
deployment and its form as both ways of deploying leave them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from components.config import load_params
from tests.conftest import tiny_overrides, tiny_rows
from tests.prefect_support import Proc, running, tiny_project_server, wait_for

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    # Own session, so the whole process group can be stopped by PID afterwards.
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # Prefect's runner exits on SIGINT
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_for(check, timeout: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.mark.integration
@pytest.mark.slow
def test_deployment_run_from_the_api_completes_with_its_parameter(tmp_path, tiny_backbone_dir):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(30)))
    overrides = tiny_overrides(tmp_path, tiny_backbone_dir) + [
        "gate.min_metrics={accuracy: 0.0}", "gate.max_latency_p95_ms=1000",
        "schedule.sensor_interval_s=86400"]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(load_params(overrides=overrides).model_dump(mode="json")))
    logs = [tmp_path / "server.log", tmp_path / "deploy.log"]
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                     str(port)], env, tmp_path, logs[0])
    runner = None
    try:
        http = httpx.Client(base_url=api, timeout=10)

        def healthy() -> bool:
            try:
                return http.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(healthy, 90, "the Prefect server", logs)
        runner = _start([str(BIN / "tuneline"), "deploy", "--params", str(params_file)], env,
                        tmp_path, logs[1])

        def deployment() -> dict | None:
            r = http.get("/deployments/name/retrain/retrain")
            return r.json() if r.status_code == 200 else None

        dep = _wait_for(deployment, 120, "the retrain deployment", logs)
        assert dep["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"
        assert "strategy" in dep["parameter_openapi_schema"]["properties"]  # the UI form
        body = {"parameters": {"params_file": str(params_file), "strategy": "adamw",
                               "max_steps": 7}}
        answers: list[str] = []

        def created() -> dict | None:
            # The runner may still be finishing the deployment it has just registered: a
            # refusal is retried until the wait ends, then reported with the server's answer.
            r = http.post(f"/deployments/{dep['id']}/create_flow_run", json=body)
            answers.append(f"{r.status_code} {r.text[:500]}")
            return r.json() if r.status_code == 201 else None

        try:
            flow_run = _wait_for(created, 60, "a flow run to be created", logs)
        except AssertionError as exc:
            raise AssertionError(f"create_flow_run answered: {answers[-3:]}") from exc

        def finished() -> dict | None:
            run = http.get(f"/flow_runs/{flow_run['id']}").json()
            return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED",
                                                   "CANCELLED") else None

        run = _wait_for(finished, 600, "the flow run to finish", logs)
        assert run["state"]["type"] == "COMPLETED", logs[1].read_text()[-4000:]
        assert run["parameters"]["max_steps"] == 7
        meta = json.loads((tmp_path / "model" / "tuneline_model.json").read_text())
        assert meta["metrics"]["steps"] == 7                       # the parameter was applied
    finally:
        if runner is not None:
            _stop(runner)
        _stop(server)
    assert server.poll() is not None and (runner is None or runner.poll() is not None)


def _published_form(api, name: str) -> dict | None:
    """The deployment once its form is published (no `T | None` toggle left), else None."""
    dep = api.deployment(name)
    props = (dep or {}).get("parameter_openapi_schema", {}).get("properties", {})
    if not props or any("anyOf" in p for p in props.values()):
        return None
    return dep


@pytest.mark.integration
@pytest.mark.slow
def test_deploy_registers_the_sweep_with_its_typed_form(tmp_path, tiny_backbone_dir):
    """`tuneline deploy --pool` and `tuneline deploy` (served) both leave a `sweep`
    deployment whose form is typed, documented and filled from params.yaml."""
    with tiny_project_server(tmp_path, tiny_backbone_dir, ["sweep.n_trials=5"]) as project:
        env, api = project.env, project.api
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", "idle", "--type",
                        "process"], env=env, check=True, capture_output=True, timeout=120)
        pooled = subprocess.run([str(BIN / "tuneline"), "deploy", "--pool", "idle",
                                 "--params", str(project.params_file)], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert pooled.returncode == 0, pooled.stdout + pooled.stderr
        assert "registered 5 deployments" in pooled.stdout
        _assert_sweep_form(_published_form(api, "sweep"), project.params_file, pool="idle")

        runner = Proc([str(BIN / "tuneline"), "deploy", "--params",
                       str(project.params_file)], env, tmp_path, tmp_path / "deploy.log")
        with running(runner):
            wait_for(lambda: "serving deployments" in runner.log.read_text(), 300,
                     "the runner to register its deployments", [runner, project.server])
            dep = wait_for(lambda: _published_form(api, "sweep"), 60, "the sweep form",
                           [runner, project.server])
            _assert_sweep_form(dep, project.params_file, pool=None)
            retrain = wait_for(lambda: _published_form(api, "retrain"), 60,
                               "the retrain form", [runner, project.server])
            assert retrain["parameter_openapi_schema"]["properties"]["strategy"]["enum"][0] \
                == "adamw"


def _assert_sweep_form(dep: dict | None, params_file, pool: str | None) -> None:
    assert dep is not None, "no sweep deployment with a published form"
    assert dep["entrypoint"].endswith("pipelines/sweep.py:sweep")
    assert dep["enforce_parameter_schema"] is True
    if pool is not None:
        assert dep["work_pool_name"] == pool
    assert dep["tags"] == ["tuneline"] and dep["schedules"] == []
    props = dep["parameter_openapi_schema"]["properties"]
    assert props["n_trials"]["type"] == "integer" and props["n_trials"]["minimum"] == 1
    assert props["n_trials"]["default"] == 5 == dep["parameters"]["n_trials"]
    assert props["strategy"]["enum"] == ["adamw", "cem", "es", "mezo", "zo_sign"]
    assert props["dask_address"] == {**props["dask_address"], "type": "string", "default": ""}
    assert props["params_file"]["default"] == str(params_file)
    for name, prop in props.items():
        assert prop["description"] and "\n" not in prop["description"], name
