"""One verb per stage: `tuneline ingest | prepare | pretrain | finetune | compress |
evaluate | export | gate | register`, and `tuneline stages` to see what is current. Each
verb parses its options, calls the stage function (components/stages), and the stage
prints its one-line result: the same function the Prefect task and the dvc.yaml stage call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import (
    InputOpt,
    JsonOpt,
    OutputOpt,
    ParamsOpt,
    SetOpt,
    app,
    emit,
    exit_for_verdict,
    fail,
    log_to_console,
    params_or_exit,
    user_errors,
)

ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Run even when the output already holds the result of these inputs.")]


def _run(stage: str, params, set_, force: bool | None = None, **kwargs):
    """Call the stage function; returns its StageResult (the stage logs its one line)."""
    from pipelines.quiet import quiet_libraries

    p = params_or_exit(params, set_, **kwargs.pop("named", {}))
    log_to_console()
    quiet_libraries()
    from components import stages

    with user_errors():
        return getattr(stages, stage)(p, **({"force": force} if force is not None else {}),
                                      **kwargs)


@app.command("ingest")
def ingest(
    file: Annotated[Path | None, typer.Argument(
        help="Labeled CSV / JSONL / Parquet (the same as --input).", show_default=False)] = None,
    input_: InputOpt = None,
    notify: Annotated[bool, typer.Option(
        "--notify", help="Also announce the file to the Prefect server (PREFECT_API_URL) as "
                         "a tuneline.data.changed event, which starts the retrain "
                         "deployment on it.")] = False,
    params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Validate the input file and copy its exact bytes into paths.input (for DVC).

    With --notify the file (and the md5 of its bytes) is announced afterwards, so a running
    `tuneline deploy` retrains on it; only then, so `dvc repro` never starts a run.
    """
    if file is not None and input_ is not None and file != input_:
        fail(f"two input files given: {file} and --input {input_}")
    source = (file or input_).resolve() if (file or input_) else None
    if notify and not os.environ.get("PREFECT_API_URL"):
        fail("--notify needs a running Prefect server: set PREFECT_API_URL "
             "(e.g. http://127.0.0.1:4200/api, see `tuneline ui`)")
    _run("ingest", params, set_, named={"data_path": source})
    if notify:
        from components.data_io import md5_file
        from pipelines.events import DATA_CHANGED, emit_data_changed

        raw = Path(params_or_exit(params, set_, data_path=source).paths.raw).resolve()
        md5 = md5_file(raw)
        try:
            event_id = emit_data_changed(raw, md5, source="tuneline ingest", flush=True)
        except RuntimeError as exc:
            fail(str(exc))
        typer.echo(f"announced {raw} (md5 {md5}) as {DATA_CHANGED} event {event_id}")


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
             nproc: Annotated[int | None, typer.Option(
                 "--nproc", min=1, help="Train as this many ranks under torchrun "
                 "(default: finetune.nproc).")] = None,
             force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Fine-tune with finetune.strategy and peft.method; opens the model's MLflow run."""
    _run("finetune", params, set_, force, resume=resume, named={"nproc": nproc})


@app.command("compress")
def compress(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Distil the fine-tuned model into a student with compress.keep_layers (when enabled)."""
    _run("compress", params, set_, force)


@app.command("evaluate")
def evaluate(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Score the trained model on the test split (paths.eval)."""
    _run("evaluate", params, set_, force)


@app.command("export")
def export(force: ForceOpt = False, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """ONNX fp32 + int8 bundle with parity, size and latency (paths.export)."""
    _run("export", params, set_, force)


@app.command("gate")
def gate(force: ForceOpt = False,
         allow_reject: Annotated[bool, typer.Option(
             "--allow-reject", help="Exit 0 when the gate rejects (the verdict is written all "
                                    "the same, for `register`): what dvc.yaml runs.")] = False,
         as_json: JsonOpt = False, output: OutputOpt = None,
         params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Judge the bundle against the rules and the re-scored @champion (paths.gate).

    Exits 4 when the gate rejects the model (unless --allow-reject).
    """
    verdict = _run("gate", params, set_, force)
    emit(verdict.result, "", as_json=as_json, output=output)  # the stage logged its line
    if not allow_reject:
        exit_for_verdict(verdict["passed"], verdict.get("reasons", []))


@app.command("register")
def register(force: ForceOpt = False, as_json: JsonOpt = False, output: OutputOpt = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Register the bundle as a model version with full lineage; move the aliases.

    Runs the gate first when this release is not registered yet (it reuses its verdict
    unless @champion moved). Exits 4 when the version's verdict is a rejection (it is
    @challenger).
    """
    from components.stages import find_registered

    p = params_or_exit(params, set_)
    with user_errors():
        if find_registered(p) is None:
            _run("gate", params, set_)
    done = _run("register", params, set_, force)
    emit(done.result, "", as_json=as_json, output=output)  # the stage logged its line
    exit_for_verdict(done["passed"], "the gate rejected it; see `tuneline models show "
                                     f"{done['version']}`")


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
