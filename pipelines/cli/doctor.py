"""`tuneline doctor`: is this machine ready to run the pipeline (pipelines/doctor.py)?"""

from __future__ import annotations

import typer

from pipelines import package_version
from pipelines.cli.app import (
    ExitCode,
    JsonOpt,
    OutputOpt,
    ParamsOpt,
    SetOpt,
    app,
    emit,
    params_or_exit,
)
from pipelines.doctor import FAIL, run_checks


@app.command("doctor")
def doctor(as_json: JsonOpt = False, output: OutputOpt = None,
           params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Check Python, torch, the MLflow store, Prefect, the DVC remote and free disk.

    One line per check: OK, WARN (works, with a limit worth knowing) or FAIL (a run would
    fail), and what to do. Exits 0 when nothing failed; 2 when a check of this machine or
    its params failed (Python, torch and model.device, disk), which needs fixing here
    first; else 6 when only a server or remote failed or refused (MLflow, Prefect, the DVC
    remote), which may pass again later.
    """
    p = params_or_exit(params, set_)
    checks = run_checks(p)
    failed = [c for c in checks if c.status == FAIL]
    code = (ExitCode.OK if not failed
            else ExitCode.SERVICE if all(c.service for c in failed) else ExitCode.USAGE)
    emit({"tuneline": package_version(), "ok": not failed, "exit_code": int(code),
          "checks": [c.as_dict() for c in checks]},
         "\n".join(c.line() for c in checks), as_json=as_json, output=output)
    raise typer.Exit(int(code))
