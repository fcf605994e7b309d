"""`tuneline run`, `deploy`, `ui`: the retrain flow locally, on a schedule, and its UIs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ParamsOpt, SetOpt, app, fail, params_or_exit

StrategyOpt = Annotated[str | None, typer.Option(
    "--strategy", help="adamw | mezo | zo_sign | es (default: finetune.strategy).")]
PeftOpt = Annotated[str | None, typer.Option(
    "--peft", help="none | lora | ia3 | prompt_tuning | prefix_tuning (default: peft.method).")]
PretrainOpt = Annotated[bool | None, typer.Option(
    "--pretrain/--no-pretrain", help="MLM domain pretraining first (default: pretrain.enabled).")]
InputOpt = Annotated[Path | None, typer.Option(
    "--input", help="CSV / JSONL / Parquet to train on (default: paths.raw, the demo corpus).")]


@app.command("run")
def run(input_: InputOpt = None, strategy: StrategyOpt = None, peft: PeftOpt = None,
        pretrain: PretrainOpt = None, params: ParamsOpt = None, set_: SetOpt = None,
        json_out: Annotated[Path | None, typer.Option(
            "--json", help="Also write the run summary (with stage timings) here.")] = None
        ) -> None:
    """The main job: retrain -> gate -> promote, locally (Prefect starts a temporary server)."""
    from pydantic import ValidationError

    from pipelines.reporting import render_summary
    from pipelines.retrain import RetrainConfig, retrain

    params_or_exit(params, set_)  # fail fast, with the key's name, before Prefect starts
    try:
        config = RetrainConfig(data_path=str(input_) if input_ else None, strategy=strategy,
                               peft_method=peft, pretrain=pretrain, overrides=set_ or [],
                               params_file=str(params) if params else None)
    except ValidationError as exc:
        fail(str(exc))
    started = time.perf_counter()
    result = retrain(config)
    if json_out is not None:
        from components.io import atomic_write_json

        atomic_write_json(json_out, {**result, "wall_seconds": time.perf_counter() - started})
    typer.echo("\n" + render_summary(result))
    typer.echo("Look closer:\n"
               "  tuneline models           versions, aliases, metrics, gate verdicts\n"
               "  tuneline ui               Prefect UI (runs, artifacts) + MLflow UI\n"
               "  tuneline serve            serve @champion on http://127.0.0.1:8000")


@app.command("deploy")
def deploy(params: ParamsOpt = None, set_: SetOpt = None,
           limit: Annotated[int, typer.Option(help="Flow runs at once.")] = 1,
           pool: Annotated[str | None, typer.Option(
               help="Register on this work pool instead of serving here; run "
                    "`prefect worker start --pool POOL` to execute.")] = None) -> None:
    """Serve the retrain deployments: cron schedule, data sensor, runs started from the UI.

    Needs a Prefect server (`tuneline ui`, or PREFECT_API_URL); runs until interrupted.
    """
    from pipelines.deployments import deploy_to_pool, serve_deployments

    p = params_or_exit(params, set_)
    if pool:
        ids = deploy_to_pool(p, pool, params, set_ or [])
        typer.echo(f"registered {len(ids)} deployments on work pool {pool!r}: {ids}")
        return
    serve_deployments(p, params, set_ or [], limit=limit)


@app.command("ui")
def ui(params: ParamsOpt = None, set_: SetOpt = None,
       prefect_port: Annotated[int, typer.Option(help="Prefect UI/API port.")] = 4200,
       mlflow_port: Annotated[int, typer.Option(help="MLflow UI port.")] = 5000) -> None:
    """Start the Prefect server and the MLflow UI on 127.0.0.1; Ctrl-C stops both."""
    from components.tracking import tracking_uri

    p = params_or_exit(params, set_)
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                          "--port", str(prefect_port)]),
        subprocess.Popen([str(bin_dir / "mlflow"), "ui", "--host", "127.0.0.1", "--port",
                          str(mlflow_port), "--backend-store-uri", tracking_uri(p),
                          "--default-artifact-root",
                          Path(p.registry.artifact_root).resolve().as_uri()]),
    ]
    typer.echo(f"Prefect UI: http://127.0.0.1:{prefect_port}   "
               f"MLflow UI: http://127.0.0.1:{mlflow_port}\n"
               f"For flows to report there: export PREFECT_API_URL="
               f"http://127.0.0.1:{prefect_port}/api")
    try:
        while all(proc.poll() is None for proc in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
