"""`tuneline demo` and `tuneline prepare`: build the demo corpus, validate and split data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ParamsOpt, SetOpt, app, fail, params_or_exit


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


@app.command("prepare")
def prepare(
    input_: Annotated[Path | None, typer.Option(
        "--input", help="CSV, JSONL or Parquet with text and label columns "
                        "(default: paths.raw, the demo corpus, built when missing).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Prepared folder (default: paths.prepared).")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Validate rows, quarantine bad ones, and write stable train/validation/test splits."""
    from components.data import DataValidationError, prepare_dataset
    from components.demo import resolve_input

    p = params_or_exit(params, set_)
    source = resolve_input(p, input_)
    out_dir = out or p.paths.prepared
    try:
        report = prepare_dataset(source, out_dir, p.data)
    except DataValidationError as exc:
        fail(str(exc))
    bad = sum(report["quarantined"].values())
    typer.echo(f"prepared {report['rows_ok']} of {report['rows_in']} rows -> {out_dir} "
               f"(splits {report['split_sizes']}; quarantined {bad}: {report['quarantined']})")
