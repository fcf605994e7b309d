"""One verb per stage: `tuneline data ingest | prepare | pretrain | finetune | compress |
evaluate | export | gate | register`, and `tuneline stages` to see what is current. Each
verb parses its options, calls the stage function (components/stages), and the stage
prints its one-line result: the same function the Prefect task and the dvc.yaml stage call.
With --json the stage's result is printed as JSON on stdout (the line goes to stderr).
`tuneline ingest` is a hidden alias of `tuneline data ingest` (what dvc.yaml runs).
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
from pipelines.cli.data import data_app

ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Run even when the output already holds the result of these inputs.")]


def _report(done, as_json: bool, output: Path | None) -> None:
    """The stage logged its line; its result as JSON on stdout with --json, in -o FILE."""
    emit(done.result, "", as_json=as_json, output=output)


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


@data_app.command("ingest")
def ingest(
    file: Annotated[Path | None, typer.Argument(
        help="Labeled CSV / JSONL / Parquet (the same as --input).", show_default=False)] = None,
    input_: InputOpt = None,
    notify: Annotated[bool, typer.Option(
        "--notify", help="Also announce the file to the Prefect server (PREFECT_API_URL) as "
                         "a tuneline.data.changed event, which starts the retrain "
                         "deployment on it.")] = False,
    as_json: JsonOpt = False, output: OutputOpt = None,
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
    done = _run("ingest", params, set_, named={"data_path": source})
    if notify:
        from components.data.files import md5_file
        from pipelines.events import DATA_CHANGED, emit_data_changed

        raw = Path(params_or_exit(params, set_, data_path=source).paths.raw).resolve()
        md5 = md5_file(raw)
        try:
            event_id = emit_data_changed(raw, md5, source="tuneline ingest", flush=True)
        except RuntimeError as exc:
            fail(str(exc))
        typer.echo(f"announced {raw} (md5 {md5}) as {DATA_CHANGED} event {event_id}",
                   err=as_json)
        done.result["announced"] = {"event": DATA_CHANGED, "id": str(event_id), "md5": md5}
    _report(done, as_json, output)


# The name it had before `data` grouped it; dvc.yaml's ingest stage runs it.
app.command("ingest", hidden=True)(ingest)


@app.command("prepare")
def prepare(force: ForceOpt = False, as_json: JsonOpt = False, output: OutputOpt = None,
            params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Quarantine bad rows and write stable train/validation/test splits (paths.prepared)."""
    _report(_run("prepare", params, set_, force), as_json, output)


@app.command("pretrain")
def pretrain(force: ForceOpt = False, as_json: JsonOpt = False, output: OutputOpt = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Domain pretraining of the backbone (a marker when pretrain.enabled is false)."""
    _report(_run("pretrain", params, set_, force), as_json, output)


@app.command("finetune")
def finetune(resume: Annotated[bool, typer.Option(
                 "--resume", help="Continue from the latest checkpoint.")] = False,
             nproc: Annotated[int | None, typer.Option(
                 "--nproc", min=1, help="Train as this many ranks under torchrun "
                 "(default: finetune.nproc).")] = None,
             force: ForceOpt = False, as_json: JsonOpt = False, output: OutputOpt = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Fine-tune with finetune.strategy and peft.method; opens the model's MLflow run."""
    _report(_run("finetune", params, set_, force, resume=resume, named={"nproc": nproc}),
            as_json, output)


@app.command("compress")
def compress(force: ForceOpt = False, as_json: JsonOpt = False, output: OutputOpt = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Distil the fine-tuned model into a student with compress.keep_layers (when enabled)."""
    _report(_run("compress", params, set_, force), as_json, output)


@app.command("evaluate")
def evaluate(force: ForceOpt = False, as_json: JsonOpt = False, output: OutputOpt = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Score the trained model on the test split (paths.eval)."""
    _report(_run("evaluate", params, set_, force), as_json, output)


@app.command("export")
def export(force: ForceOpt = False, as_json: JsonOpt = False, output: OutputOpt = None,
           params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """ONNX fp32 + int8 bundle with parity, size and latency (paths.export)."""
    _report(_run("export", params, set_, force), as_json, output)


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
    _report(verdict, as_json, output)
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
    _report(done, as_json, output)
    exit_for_verdict(done["passed"], "the gate rejected it; see `tuneline models show "
                                     f"{done['version']}`")


@app.command("stages")
def stages_(dvc_yaml: Annotated[bool, typer.Option(
                "--dvc-yaml", help="Print the dvc.yaml these stages make instead.")] = False,
            as_json: JsonOpt = False, output: OutputOpt = None,
            params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """List the stages with their fingerprints and whether their outputs are current."""
    from components.stages.base import stored_result
    from components.stages.spec import ORDER, SPECS, fingerprint, output_dir, render_dvc_yaml

    if dvc_yaml:
        if as_json or output:
            fail("--dvc-yaml prints YAML: leave out --json and -o")
        typer.echo(render_dvc_yaml().rstrip())
        return
    p = params_or_exit(params, set_)
    rows = []
    for name in ORDER:
        spec = SPECS[name]
        if spec.outs and name != "ingest":
            fp = fingerprint(name, p) if name != "gate" else "(depends on @champion)"
            current = name != "gate" and stored_result(output_dir(name, p), fp) is not None
            state = "current" if current else "will run"
        else:
            fp, state = "-", "checks its sources"
        rows.append({"stage": name, "state": state, "fingerprint": fp, "summary": spec.summary})
    text = "\n".join(f"{r['stage']:<9} {r['state']:<18} {r['fingerprint']:<24} {r['summary']}"
                     for r in rows)
    emit(rows, text, as_json=as_json, output=output)
