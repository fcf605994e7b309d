"""Real servers for the UI and orchestration tests: processes in their own session on free
127.0.0.1 ports, waits that report the servers' logs when they time out, and the REST calls
the Prefect and MLflow UIs themselves make."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from components.config import load_params
from tests.conftest import tiny_overrides, tiny_rows

BIN = Path(sys.executable).parent
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# Generous: other jobs share the two cores, and a cold Prefect server migrates its database.
SERVER_TIMEOUT_S = 300

# A tiny random model whose gate judges structure, not quality (it passes on any accuracy).
RELAXED_GATE = ["gate.min_metrics.accuracy=0.0", "gate.min_metrics.macro_f1=0.0",
                "gate.int8_confident_probability=1.0", "gate.int8_max_accuracy_drop=1.0",
                "gate.max_logit_diff=1.0", "gate.max_latency_p95_ms=5000",
                "gate.max_drop_vs_champion.accuracy=1.0",
                "gate.max_drop_vs_champion.macro_f1=1.0",
                "finetune.max_steps=12", "finetune.eval_every=6",
                "finetune.checkpoint_every=6", "export.latency_repeats=3",
                "model.num_threads=1", "schedule.sensor_interval_s=86400",
                f"ui.start_timeout_s={SERVER_TIMEOUT_S}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_project(tmp_path: Path, backbone: Path, extra: list[str] | None = None) -> Path:
    """tmp_path/raw.jsonl (90 rows) and tmp_path/params.yaml for the tiny model; the params."""
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(30)))
    params = load_params(overrides=tiny_overrides(tmp_path, backbone) + RELAXED_GATE
                         + [f"ui.auth_db={tmp_path / 'mlflow-auth.db'}"] + list(extra or []))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return path


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1",
           "PREFECT_LOGGING_LEVEL": "INFO", **extra}
    for key in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "MLFLOW_TRACKING_URI",
                "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD"):
        if key not in extra:
            env.pop(key, None)
    return env


class Proc:
    """A command in its own session (so its whole process group can be stopped), logging
    to a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self.popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=open(log, "wb"),  # noqa: SIM115
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.log.name}\n{self.log.read_text(errors='replace')[-chars:]}"

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a crash, no shutdown."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGINT)  # Prefect's runner exits on SIGINT
            try:
                self.popen.wait(timeout=120)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Children that outlived the leader (a server's workers) go with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def wait_for(check: Callable[[], Any], timeout: float, what: str, procs: list[Proc],
             interval: float = 1.0) -> Any:
    """Poll `check` until truthy; fail at the timeout, or at once when a process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        dead = [p for p in procs if p.popen.poll() is not None]
        if dead:
            raise AssertionError(f"{dead[0].log.name}: the process exited while waiting for "
                                 f"{what}\n" + "\n".join(p.tail() for p in procs))
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                         + "\n".join(p.tail() for p in procs))


def answers(client: httpx.Client, path: str) -> bool:
    try:
        client.get(path)
        return True
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


class PrefectAPI:
    """The REST calls the Prefect UI makes, against a real server."""

    def __init__(self, api_url: str, auth: tuple[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=api_url, timeout=30, auth=auth)

    def deployment(self, name: str) -> dict | None:
        """The deployment, None while it (or the server) is not there yet."""
        try:
            r = self.http.get(f"/deployments/name/{name}/{name}")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def create_run(self, deployment: str, parameters: dict) -> dict:
        dep = self.deployment(deployment)
        assert dep is not None, f"no deployment {deployment}"
        for _ in range(20):  # SQLite answers 503 while another write holds the database
            r = self.http.post(f"/deployments/{dep['id']}/create_flow_run",
                               json={"parameters": parameters})
            if r.status_code not in (429, 503):
                break
            time.sleep(0.5)
        assert r.status_code == 201, r.text
        return r.json()

    def flow_run(self, run_id: str) -> dict:
        return self.http.get(f"/flow_runs/{run_id}").json()

    def flow_runs(self, deployment: str | None = None) -> list[dict]:
        body: dict = {"sort": "EXPECTED_START_TIME_ASC"}
        if deployment is not None:
            body["deployments"] = {"name": {"any_": [deployment]}}
        r = self.http.post("/flow_runs/filter", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def task_runs(self, flow_run_id: str) -> list[dict]:
        r = self.http.post("/task_runs/filter", json={
            "flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC"})
        return r.json()

    def events(self, prefix: str) -> list[dict]:
        r = self.http.post("/events/filter", json={"filter": {"event": {"prefix": [prefix]}}})
        return r.json()["events"] if r.status_code == 200 else []

    def wait_final(self, run_id: str, timeout: float, procs: list[Proc]) -> dict:
        return wait_for(lambda: (r := self.flow_run(run_id))["state"]["type"] in FINAL and r,
                        timeout, f"flow run {run_id} to finish", procs, interval=2)


class MlflowREST:
    """The REST calls MLflow's own UI makes (the `ajax-api` prefix), against a real server."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, auth=auth)

    def versions(self, model: str) -> list[dict]:
        r = self.http.get("/ajax-api/2.0/mlflow/model-versions/search",
                          params={"filter": f"name='{model}'"})
        assert r.status_code == 200, r.text
        return sorted(r.json().get("model_versions", []), key=lambda v: int(v["version"]))

    def tags(self, model: str, version: str) -> dict[str, str]:
        r = self.http.get("/ajax-api/2.0/mlflow/model-versions/get",
                          params={"name": model, "version": version})
        assert r.status_code == 200, r.text
        return {t["key"]: t["value"] for t in r.json()["model_version"].get("tags", [])}

    def aliases(self, model: str) -> dict[str, str]:
        r = self.http.get("/ajax-api/2.0/mlflow/registered-models/get", params={"name": model})
        assert r.status_code == 200, r.text
        return {a["alias"]: a["version"]
                for a in r.json()["registered_model"].get("aliases", [])}

    def set_alias(self, model: str, alias: str, version: str) -> httpx.Response:
        return self.http.post("/ajax-api/2.0/mlflow/registered-models/alias",
                              json={"name": model, "alias": alias, "version": version})


def start_tuneline_ui(tmp_path: Path, params_file: Path, env: dict[str, str],
                      *args: str) -> tuple[Proc, int, int]:
    """`tuneline ui` on free ports, as a person starts it; returns (process, ports)."""
    prefect_port, mlflow_port = free_port(), free_port()
    proc = Proc([str(BIN / "tuneline"), "ui", "--params", str(params_file), "--prefect-port",
                 str(prefect_port), "--mlflow-port", str(mlflow_port), *args],
                env, tmp_path, tmp_path / "tuneline-ui.log")
    return proc, prefect_port, mlflow_port


@dataclass
class ProjectServer:
    """A tiny project in tmp_path served by a real Prefect server."""

    params_file: Path
    env: dict[str, str]
    server: Proc
    api: PrefectAPI


@contextlib.contextmanager
def tiny_project_server(tmp_path: Path, backbone: Path, extra: list[str] | None = None
                        ) -> Iterator[ProjectServer]:
    """Write the tiny project, start a Prefect server on a free port, yield once healthy."""
    params_file = write_tiny_project(tmp_path, backbone, extra)
    env = base_env(tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    server = start_prefect_server(tmp_path, env)
    with running(server):
        yield ProjectServer(params_file, env, server, PrefectAPI(env["PREFECT_API_URL"]))


def start_prefect_server(tmp_path: Path, env: dict[str, str], log: str = "server.log") -> Proc:
    """`prefect server start` on the port of env's PREFECT_API_URL, its database under env's
    PREFECT_HOME (so a second one started the same way is the first one restarted);
    returns once it answers."""
    port = str(httpx.URL(env["PREFECT_API_URL"]).port)
    server = Proc([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                   port], env, tmp_path, tmp_path / log)
    api = PrefectAPI(env["PREFECT_API_URL"])
    try:
        wait_for(lambda: answers(api.http, "/health"), SERVER_TIMEOUT_S, "the server",
                 [server])
    except BaseException:
        server.stop()
        raise
    return server


def hold_slot(params_file: str, cue: str) -> None:
    """Run in a subprocess: take the model's retrain slot as a retrain does, print HOLDING,
    and once the file `cue` exists check the slot as before a stage (RetrainSlotLost ends
    the process with status 1) and print STILL HOLDING."""
    import logging

    from pipelines.limits import one_retrain_per_model

    logger = logging.getLogger("slot-holder")  # to stdout only (no flow run to log to)
    logger.addHandler(logging.StreamHandler(sys.stdout))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with one_retrain_per_model(load_params(params_file), logger) as slot:
        print("HOLDING", flush=True)
        while not Path(cue).exists():
            time.sleep(0.05)
        slot.check("register")
        print("STILL HOLDING", flush=True)
