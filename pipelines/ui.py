"""`tuneline ui`: the Prefect server, the MLflow server and the deployments' runner, together.

The Prefect UI is a web page that calls the API at the address the server announces in
`/ui-settings`; it is set to the port actually used, so `--prefect-port 14200` gives a UI
that talks to 14200. The runner (`tuneline deploy`) is started once the API answers, so
"Custom run" in the UI has something to execute it.

`--auth` locks both for a shared machine, with credentials from the environment, the same
variables every client of either server already reads:

    PREFECT_API_AUTH_STRING=user:password      Prefect server, runner, workers, flows, sensor
    MLFLOW_TRACKING_USERNAME / _PASSWORD       MLflow server, flows, `tuneline serve`

The Prefect server then requires that basic-auth string (PREFECT_SERVER_API_AUTH_STRING);
MLflow runs its basic-auth app, whose admin is that user (created on first start in
`ui.auth_db`), and the runner's flows reach MLflow through the server (MLFLOW_TRACKING_URI)
so every registry change is authenticated. Without credentials both APIs answer 401.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from components.config import Params
from components.registry.tracking import MLFLOW_UI_ENV

BIN = Path(sys.executable).parent
AUTH_VARIABLES = ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME",
                  "MLFLOW_TRACKING_PASSWORD")


class UIError(RuntimeError):
    """A server did not start, or `--auth` lacks credentials."""


@dataclass
class UIServers:
    """What `tuneline ui` started: addresses and processes (stop them with `stop`)."""

    prefect_url: str
    mlflow_url: str
    processes: list[subprocess.Popen] = field(default_factory=list)
    workdir: tempfile.TemporaryDirectory | None = None

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    def stop(self) -> None:
        """Stop the runner, then the servers: SIGINT, wait, kill what hangs.

        In that order because a runner whose server is gone keeps trying to reconnect
        instead of exiting.
        """
        for proc in reversed(self.processes):
            _signal_group(proc, signal.SIGINT)  # the group: MLflow's server has a child
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.workdir is not None:
            self.workdir.cleanup()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def auth_credentials() -> dict[str, str]:
    """The credentials `--auth` uses, from the environment.

    Raises:
        UIError: a variable is missing, or PREFECT_API_AUTH_STRING is not user:password.
    """
    missing = [name for name in AUTH_VARIABLES if not os.environ.get(name)]
    if missing:
        raise UIError(f"--auth takes its credentials from the environment; set {', '.join(missing)}"
                      " (e.g. PREFECT_API_AUTH_STRING=admin:pw MLFLOW_TRACKING_USERNAME=admin "
                      "MLFLOW_TRACKING_PASSWORD=pw)")
    if ":" not in os.environ["PREFECT_API_AUTH_STRING"]:
        raise UIError("PREFECT_API_AUTH_STRING must look like user:password")
    return {name: os.environ[name] for name in AUTH_VARIABLES}


def _ui_api_url(host: str, port: int) -> str:
    """The API address a browser can reach: PREFECT_UI_API_URL if set, else host:port."""
    if os.environ.get("PREFECT_UI_API_URL"):
        return os.environ["PREFECT_UI_API_URL"]
    shown = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}/api"


def prefect_command(params: Params, port: int, auth: dict[str, str] | None
                    ) -> tuple[list[str], dict[str, str]]:
    host = params.ui.host
    env = {**os.environ, "PREFECT_UI_API_URL": _ui_api_url(host, port),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth["PREFECT_API_AUTH_STRING"]
    cmd = [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(port)]
    return cmd, env


def mlflow_command(params: Params, port: int, auth: dict[str, str] | None, workdir: Path
                   ) -> tuple[list[str], dict[str, str]]:
    from components.registry.tracking import tracking_uri

    backend = tracking_uri(params)
    if backend.startswith("http"):
        raise UIError(f"the MLflow tracking URI is a server already ({backend}); `tuneline ui` "
                      "starts one on registry.tracking_uri: unset MLFLOW_TRACKING_URI")
    cmd = [str(BIN / "mlflow"), "server", "--host", params.ui.host, "--port", str(port),
           "--workers", "1", "--backend-store-uri", backend,
           "--default-artifact-root", Path(params.registry.artifact_root).resolve().as_uri()]
    env = dict(os.environ)
    if auth:
        ini = workdir / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = sqlite:///{Path(params.ui.auth_db).resolve()}\n"
                       "authorization_function = "
                       "mlflow.server.auth:authenticate_request_basic_auth\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini),
                   MLFLOW_AUTH_ADMIN_USERNAME=auth["MLFLOW_TRACKING_USERNAME"],
                   MLFLOW_AUTH_ADMIN_PASSWORD=auth["MLFLOW_TRACKING_PASSWORD"])
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(16))
        cmd += ["--app-name", "basic-auth"]
    return cmd, env


def runner_command(params_file: Path | None, overrides: list[str], api_url: str,
                   mlflow_url: str, auth: dict[str, str] | None
                   ) -> tuple[list[str], dict[str, str]]:
    cmd = [str(BIN / "tuneline"), "deploy"]
    if params_file is not None:
        cmd += ["--params", str(params_file)]
    for item in overrides:
        cmd += ["--set", item]
    # Where the flows' links to a model version point: the MLflow UI started here.
    env = {**os.environ, "PREFECT_API_URL": api_url, MLFLOW_UI_ENV: mlflow_url}
    if auth:
        env.setdefault("MLFLOW_TRACKING_URI", mlflow_url)
    return cmd, env


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll `url` until it answers (any HTTP status); fail when the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UIError(f"{what} exited with code {proc.returncode} before it answered")
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise UIError(f"{what} did not answer at {url} within {timeout:.0f} s (ui.start_timeout_s)")


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Its own process group: Ctrl-C reaches `tuneline ui` alone, which then stops the
    # children in order (see UIServers.stop).
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def start_ui(params: Params, params_file: Path | None, overrides: list[str], *,
             prefect_port: int, mlflow_port: int, auth: bool, deploy: bool) -> UIServers:
    """Start the servers (and the runner), wait until they answer, return them."""
    creds = auth_credentials() if auth else None
    workdir = tempfile.TemporaryDirectory(prefix="tuneline-ui-")
    shown = "127.0.0.1" if params.ui.host in ("0.0.0.0", "::") else params.ui.host
    servers = UIServers(f"http://{shown}:{prefect_port}", f"http://{shown}:{mlflow_port}",
                        workdir=workdir)
    try:
        cmd, env = prefect_command(params, prefect_port, creds)
        servers.processes.append(_spawn(cmd, env))
        cmd, env = mlflow_command(params, mlflow_port, creds, Path(workdir.name))
        servers.processes.append(_spawn(cmd, env))
        timeout = params.ui.start_timeout_s
        wait_until_up(f"{servers.api_url}/health", servers.processes[0], timeout, "Prefect")
        wait_until_up(f"{servers.mlflow_url}/health", servers.processes[1], timeout, "MLflow")
        if deploy:
            cmd, env = runner_command(params_file, overrides, servers.api_url,
                                      servers.mlflow_url, creds)
            servers.processes.append(_spawn(cmd, env))
    except BaseException:
        servers.stop()
        raise
    return servers


def walkthrough(servers: UIServers, auth: bool, deploy: bool) -> str:
    """What to open and what to click, printed by `tuneline ui`."""
    p, m = servers.prefect_url, servers.mlflow_url
    lines = [f"Prefect UI: {p}    MLflow UI: {m}", ""]
    if deploy:
        lines += [
            "Start a run:   Deployments > retrain > Run > Custom run: pick strategy, PEFT method,",
            "               steps (each field starts at params.yaml's value) > Submit",
            "Watch it:      the run's page shows each stage as a task and its log lines",
            "Gate verdict:  the run's Artifacts tab > gate-report (every rule, value, threshold)",
            f"               or MLflow > Models > the version's tags ({m})",
            "Promote:       Deployments > promote > Run > Custom run: version and reason",
            "Roll back:     Deployments > rollback > Run > Custom run: reason",
            "Sweep:         Deployments > sweep > Run > Custom run: trials, then the winner "
            "is gated",
            "New data:      tuneline data ingest FILE --notify  (starts retrain on FILE)", ""]
    lines.append(f"Other shells, to use these servers: export PREFECT_API_URL={servers.api_url}")
    if auth:
        lines.append(f"  and MLFLOW_TRACKING_URI={m}, with the same credentials "
                     "(PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME/PASSWORD); the "
                     "Prefect UI asks for user:password once")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)
