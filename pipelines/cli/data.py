"""`tuneline demo` and `tuneline data version | restore`: the demo corpus and data lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ParamsOpt, SetOpt, app, fail, params_or_exit, user_errors

data_app = typer.Typer(help="Data versions: store in DVC, restore what made a model.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command("demo")
def demo(
    out: Annotated[Path | None, typer.Option(help="Corpus folder (default: paths.corpus).")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Build the demo corpus from the standard library's docstrings."""
    from components.demo import build_demo_corpus

    p = params_or_exit(params, set_)
    meta = build_demo_corpus(out or p.paths.corpus, p.demo)
    typer.echo(f"demo corpus: {meta['labeled_rows']} labeled rows in {len(meta['families'])} "
               f"families, {meta['unlabeled_docs']} unlabeled docs -> {out or p.paths.corpus}")


@data_app.command("version")
def version(no_push: Annotated[bool, typer.Option(
                "--no-push", help="Store in the DVC cache only.")] = False,
            params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Store the ingested input and the prepared splits in DVC and push them."""
    from components.stages import version_data

    p = params_or_exit(params, set_)
    with user_errors():
        result = version_data(p, push=not no_push)
    typer.echo(f"version: {result.summary}\n  dvc.lock: {result['dvc_lock']}")


@data_app.command("restore")
def restore(
    version: Annotated[str, typer.Argument(help="Model version number or alias (champion).")],
    out: Annotated[Path, typer.Option(
        help="New or empty folder to write input/ and prepared/ into.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUT even when it holds files (they are deleted).")] = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fetch from the DVC remote the exact input and splits that trained VERSION; verify."""
    from components.registry import version_tags
    from components.stages import restore_data

    p = params_or_exit(params, set_)
    with user_errors():
        number, tags = version_tags(p, version)
        restored = restore_data(p, tags, out, force=force)
    typer.echo(f"restored the data of {p.registry.model_name} v{number} into {out}:")
    for tag, item in restored.items():
        typer.echo(f"  {item['path']:<40} {tag} {item['hash']} (verified)")
    if not restored:
        fail("nothing restored")
