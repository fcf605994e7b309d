"""`tuneline sweep`: the sweep flow from the command line (same inputs as `tuneline run`)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from pipelines.cli.app import (
    ExitCode,
    InputOpt,
    JsonOpt,
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
    params_or_exit,
    user_errors,
)


@app.command("sweep")
def sweep(input_: InputOpt = None, strategy: StrategyOpt = None, peft: PeftOpt = None,
          pretrain: PretrainOpt = None, max_steps: StepsOpt = None,
          trials: Annotated[int | None, typer.Option(
              "--trials", help="Trials in the study (default: sweep.n_trials).")] = None,
          dask_address: Annotated[str | None, typer.Option(
              "--dask-address", help="Scheduler of an existing Dask cluster, e.g. "
                                     "tcp://10.0.0.5:8786 (default: a local cluster).")] = None,
          params: ParamsOpt = None, set_: SetOpt = None, as_json: JsonOpt = False,
          output: OutputOpt = None) -> None:
    """Search sweep.space with Optuna on Dask; the best goes through the gate like `run`.

    The best trial's settings then take the same chain as `tuneline run` (test split,
    export, gate against @champion, register). Running it again resumes the same study.
    Bad input and bad params fail here, in one line, before any server starts.
    """
    from components.stages import check_inputs
    from components.sweep import check_space
    from components.sweep.summary import render_markdown
    from pipelines.reporting import render_summary

    data_path = str(input_.resolve()) if input_ else None
    named = {"data_path": data_path, "strategy": strategy and strategy.value,
             "peft_method": peft and peft.value, "pretrain": pretrain, "max_steps": max_steps}
    p = params_or_exit(params, set_, **named, n_trials=trials, dask_address=dask_address)
    with user_errors():
        check_inputs(p)
        check_space(p)
    from pipelines.retrain import outcome
    from pipelines.sweep import sweep as sweep_flow

    started = time.perf_counter()
    with user_errors():
        result = outcome(sweep_flow(**named, n_trials=trials, dask_address=dask_address,
                                    overrides=list(set_ or []), return_state=True,
                                    params_file=str(params.resolve()) if params else None))
    result = {**result, "wall_seconds": time.perf_counter() - started}
    found = result["sweep"]
    text = ("\n" + render_markdown({**found, "trials": []}).rstrip()
            + f"\ntrial table, plot: {found['folder']}\n\n" + render_summary(result))
    emit(result, text, as_json=as_json, output=output)
    if result.get("status") == "skipped":
        raise typer.Exit(int(ExitCode.BUSY))
    exit_for_verdict(result.get("gate_passed"), result.get("gate_reasons", []))
