"""`tuneline run`, `deploy`, `ui`: the retrain flow locally, on a schedule, and its UIs."""

from __future__ import annotations

import signal
import time
from typing import Annotated

import typer

from pipelines.cli.app import (
    ExitCode,
    InputOpt,
    JsonOpt,
    NprocOpt,
    OutputOpt,
    ParamsOpt,
    PeftOpt,
    PretrainOpt,
    SetOpt,
    StepsOpt,
    StrategyOpt,
    app,
    emit,
    exit_for_verdict,
    fail,
    params_or_exit,
    user_errors,
)


@app.command("run")
def run(input_: InputOpt = None, strategy: StrategyOpt = None, peft: PeftOpt = None,
        pretrain: PretrainOpt = None, max_steps: StepsOpt = None, nproc: NprocOpt = None,
        tune: Annotated[bool, typer.Option(
            "--tune", help="Search the settings first (`tuneline sweep`, its budget in "
                           "sweep.*), then ship the winner through the gate.")] = False,
        params: ParamsOpt = None, set_: SetOpt = None, as_json: JsonOpt = False,
        output: OutputOpt = None) -> None:
    """The main job: ingest -> ... -> gate -> register, as a Prefect flow run.

    Bad input and bad params fail here, in one line, before any server starts. Exits 0
    when the version passed the gate, 4 when the gate rejected it (it is @challenger and
    @champion did not move), 5 when another run of the model holds its slot.
    """
    if tune:
        if nproc is not None:
            fail("--tune runs each trial as one process: drop --nproc")
        from pipelines.cli.sweep import sweep

        sweep(input_=input_, strategy=strategy, peft=peft, pretrain=pretrain,
              max_steps=max_steps, params=params, set_=set_, as_json=as_json, output=output)
        return
    from components.stages import check_inputs
    from pipelines.reporting import render_summary

    data_path = str(input_.resolve()) if input_ else None
    named = {"data_path": data_path, "strategy": strategy and strategy.value,
             "peft_method": peft and peft.value, "pretrain": pretrain,
             "max_steps": max_steps, "nproc": nproc}
    p = params_or_exit(params, set_, **named)
    with user_errors():
        check_inputs(p)
    from pipelines.retrain import outcome, retrain

    started = time.perf_counter()
    with user_errors():
        result = outcome(retrain(**named, overrides=list(set_ or []), return_state=True,
                                 params_file=str(params.resolve()) if params else None))
    result = {**result, "wall_seconds": time.perf_counter() - started}
    text = "\n" + render_summary(result)
    if result["status"] != "skipped":
        text += ("Look closer:\n"
                 f"  tuneline models show {result['version']}   lineage, params diff, verdict\n"
                 "  tuneline ui               Prefect UI (runs, artifacts) + MLflow UI\n"
                 "  tuneline serve            serve @champion on http://127.0.0.1:8000")
    emit(result, text, as_json=as_json, output=output)
    if result["status"] == "skipped":
        raise typer.Exit(int(ExitCode.BUSY))
    exit_for_verdict(result.get("gate_passed"), result.get("gate_reasons", []))


@app.command("deploy")
def deploy(params: ParamsOpt = None, set_: SetOpt = None,
           limit: Annotated[int | None, typer.Option(
               help="Flow runs at once (default: schedule.runs_at_once); a model still "
                    "retrains one run at a time.")] = None,
           pool: Annotated[str | None, typer.Option(
               help="Register on this work pool instead of serving here; run "
                    "`prefect worker start --pool POOL` to execute.")] = None) -> None:
    """Serve the deployments: retrain (schedule, new-data trigger, UI), watch-data, promote,
    rollback, sweep.

    Needs a Prefect server (`tuneline ui`, or PREFECT_API_URL); runs until interrupted.
    """
    from pipelines.deployments import deploy_to_pool, serve_deployments

    p = params_or_exit(params, set_)
    if pool:
        ids = deploy_to_pool(p, pool, params, set_ or [])
        typer.echo(f"registered {len(ids)} deployments on work pool {pool!r}: {ids}")
        return
    serve_deployments(p, params, set_ or [], limit=limit or p.schedule.runs_at_once)


@app.command("ui")
def ui(params: ParamsOpt = None, set_: SetOpt = None,
       prefect_port: Annotated[int | None, typer.Option(
           help="Prefect UI/API port (default: ui.prefect_port).")] = None,
       mlflow_port: Annotated[int | None, typer.Option(
           help="MLflow UI port (default: ui.mlflow_port).")] = None,
       auth: Annotated[bool, typer.Option(
           "--auth", help="Require credentials on both servers (from PREFECT_API_AUTH_STRING, "
                          "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD).")] = False,
       deploy_: Annotated[bool, typer.Option(
           "--deploy/--no-deploy", help="Also run the deployments (`tuneline deploy`), so "
                                        "runs started in the UI execute.")] = True) -> None:
    """Start the Prefect server, the MLflow UI and the deployments; Ctrl-C stops them.

    Prints where to click: start a run, watch it, read the gate's verdict, promote or
    roll back.
    """
    from pipelines.ui import UIError, start_ui, walkthrough

    p = params_or_exit(params, set_)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on SIGTERM too
    try:
        servers = start_ui(p, params, list(set_ or []),
                           prefect_port=prefect_port or p.ui.prefect_port,
                           mlflow_port=mlflow_port or p.ui.mlflow_port, auth=auth,
                           deploy=deploy_)
    except UIError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(walkthrough(servers, auth, deploy_), err=False)
    try:
        while all(proc.poll() is None for proc in servers.processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
