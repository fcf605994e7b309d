"""`tuneline run`, `deploy`, `ui`: the retrain flow locally, on a schedule, and its UIs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import InputOpt, ParamsOpt, SetOpt, app, params_or_exit, user_errors

StrategyOpt = Annotated[str | None, typer.Option(
    "--strategy", help="adamw | mezo | zo_sign | es (default: finetune.strategy).")]
PeftOpt = Annotated[str | None, typer.Option(
    "--peft", help="none | lora | ia3 | prompt_tuning | prefix_tuning (default: peft.method).")]
PretrainOpt = Annotated[bool | None, typer.Option(
    "--pretrain/--no-pretrain", help="Domain pretraining first (default: pretrain.enabled).")]
StepsOpt = Annotated[int | None, typer.Option(
    "--max-steps", help="Training steps (default: finetune.max_steps).")]


@app.command("run")
def run(input_: InputOpt = None, strategy: StrategyOpt = None, peft: PeftOpt = None,
        pretrain: PretrainOpt = None, max_steps: StepsOpt = None, params: ParamsOpt = None,
        set_: SetOpt = None,
        json_out: Annotated[Path | None, typer.Option(
            "--json", help="Also write the run summary (with stage timings) here.")] = None
        ) -> None:
    """The main job: ingest -> ... -> gate -> register, as a Prefect flow run.

    Bad input and bad params fail here, in one line, before any server starts.
    """
    from components.stages import check_inputs
    from pipelines.reporting import render_summary

    data_path = str(input_.resolve()) if input_ else None
    named = {"data_path": data_path, "strategy": strategy, "peft_method": peft,
             "pretrain": pretrain, "max_steps": max_steps}
    p = params_or_exit(params, set_, **named)
    with user_errors():
        check_inputs(p)
    from pipelines.retrain import retrain

    started = time.perf_counter()
    with user_errors():
        result = retrain(**named, overrides=list(set_ or []),
                         params_file=str(params.resolve()) if params else None)
    if json_out is not None:
        from components.io import atomic_write_json

        atomic_write_json(json_out, {**result, "wall_seconds": time.perf_counter() - started})
    typer.echo("\n" + render_summary(result))
    if result["status"] == "skipped":
        raise typer.Exit(1)
    typer.echo("Look closer:\n"
               f"  tuneline models show {result['version']}   lineage, params diff, verdict\n"
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
