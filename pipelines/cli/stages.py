"""One verb per stage: `tuneline ingest | prepare | pretrain | finetune | evaluate | export |
gate | register`, and `tuneline stages` to see what is current. Each verb parses its options,
calls the stage function (components/stages) and prints the result: the same function the
Prefect task and the dvc.yaml stage call.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli.app import (
    InputOpt,
    ParamsOpt,
    SetOpt,
    app,
    log_to_console,
    params_or_exit,
    user_errors,
)

ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Run even when the output already holds the result of these inputs.")]


def _run(stage: str, params, set_, force: bool | None = None, **kwargs) -> None:
    from pipelines.quiet import quiet_libraries

    p = params_or_exit(params, set_, **kwargs.pop("named", {}))
    log_to_console()
    quiet_libraries()
    from components import stages

    with user_errors():  # the stage logs its own one-line result
        getattr(stages, stage)(p, **({"force": force} if force is not None else {}), **kwargs)


@app.command("ingest")
def ingest(input_: InputOpt = None, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Validate the input file and copy its exact bytes into paths.input (for DVC)."""
    _run("ingest", params, set_, named={"data_path": input_})


@app.command("prepare")
def prepare(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Quarantine bad rows and write stable train/validation/test splits (paths.prepared)."""
    _run("prepare", params, set_, force)


@app.command("pretrain")
def pretrain(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Domain pretraining of the backbone (a marker when pretrain.enabled is false)."""
    _run("pretrain", params, set_, force)


@app.command("finetune")
def finetune(resume: Annotated[bool, typer.Option(
                 "--resume", help="Continue from the latest checkpoint.")] = False,
             force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Fine-tune with finetune.strategy and peft.method; opens the model's MLflow run."""
    _run("finetune", params, set_, force, resume=resume)


@app.command("evaluate")
def evaluate(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Score the trained model on the test split (paths.eval)."""
    _run("evaluate", params, set_, force)


@app.command("export")
def export(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """ONNX fp32 + int8 bundle with parity, size and latency (paths.export)."""
    _run("export", params, set_, force)


@app.command("gate")
def gate(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Judge the bundle against the rules and the re-scored @champion (paths.gate)."""
    _run("gate", params, set_, force)


@app.command("register")
def register(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Register the bundle as a model version with full lineage; move the aliases."""
    _run("register", params, set_, force)


@app.command("stages")
def stages_(dvc_yaml: Annotated[bool, typer.Option(
                "--dvc-yaml", help="Print the dvc.yaml these stages make instead.")] = False,
            params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """List the stages with their fingerprints and whether their outputs are current."""
    from components.stages.base import stored_result
    from components.stages.spec import ORDER, SPECS, fingerprint, output_dir, render_dvc_yaml

    if dvc_yaml:
        typer.echo(render_dvc_yaml().rstrip())
        return
    p = params_or_exit(params, set_)
    for name in ORDER:
        spec = SPECS[name]
        if spec.outs and name != "ingest":
            fp = fingerprint(name, p) if name != "gate" else "(depends on @champion)"
            current = name != "gate" and stored_result(output_dir(name, p), fp) is not None
            state = "current" if current else "will run"
        else:
            fp, state = "-", "checks its sources"
        typer.echo(f"{name:<9} {state:<18} {fp:<24} {spec.summary}")
