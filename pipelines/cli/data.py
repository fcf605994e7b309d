"""`tuneline demo` and `tuneline data version | restore`: the demo corpus and data lineage
(`tuneline data ingest` lives with the other stage verbs, in stages.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import (
    JsonOpt,
    OutputOpt,
    ParamsOpt,
    SetOpt,
    app,
    emit,
    fail,
    params_or_exit,
    user_errors,
)

data_app = typer.Typer(help="Data: ingest a file, store versions in DVC, restore what made "
                            "a model.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command("demo")
def demo(
    out: Annotated[Path | None, typer.Option(help="Corpus folder (default: paths.corpus).")] = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Build the demo corpus from the standard library's docstrings."""
    from components.data.demo import build_demo_corpus

    p = params_or_exit(params, set_)
    meta = build_demo_corpus(out or p.paths.corpus, p.demo)
    emit(meta, f"demo corpus: {meta['labeled_rows']} labeled rows in {len(meta['families'])} "
               f"families, {meta['unlabeled_docs']} unlabeled docs -> {out or p.paths.corpus}",
         as_json=as_json, output=output)


@data_app.command("version")
def version(no_push: Annotated[bool, typer.Option(
                "--no-push", help="Store in the DVC cache only.")] = False,
            as_json: JsonOpt = False, output: OutputOpt = None,
            params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Store the ingested input and the prepared splits in DVC and push them."""
    from components.stages import version_data

    p = params_or_exit(params, set_)
    with user_errors():
        result = version_data(p, push=not no_push)
    emit(result.result, f"version: {result.summary}\n  dvc.lock: {result['dvc_lock']}",
         as_json=as_json, output=output)


@data_app.command("restore")
def restore(
    version: Annotated[str, typer.Argument(help="Model version number or alias (champion).")],
    out: Annotated[Path, typer.Option(
        help="New or empty folder to write input/ and prepared/ into.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUT even when it holds files (they are deleted).")] = False,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fetch from the DVC remote the exact input and splits that trained VERSION; verify."""
    from components.registry.versions import version_tags
    from components.stages import restore_data

    p = params_or_exit(params, set_)
    with user_errors():
        number, tags = version_tags(p, version)
        restored = restore_data(p, tags, out, force=force)
    if not restored:
        fail("nothing restored")
    text = "\n".join([f"restored the data of {p.registry.model_name} v{number} into {out}:"] + [
        f"  {item['path']:<40} {tag} {item['hash']} (verified)" for tag, item in restored.items()])
    emit({"model": p.registry.model_name, "version": number, "out": str(out),
          "restored": restored}, text, as_json=as_json, output=output)
