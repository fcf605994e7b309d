"""Shared Typer app and option helpers for every `tuneline` command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from components.config import ConfigError, Params, load_params

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    name="tuneline",
    help="Retrain, gate, export, promote and serve a transformer text classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Retrain, gate, export, promote and serve a transformer text classifier."""

ParamsOpt = Annotated[
    Path | None, typer.Option("--params", help="params.yaml to read (default: the project's).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a param: --set finetune.strategy=mezo (repeatable)."),
]


def fail(message: str, code: int = 2) -> None:
    """Print a clear error to stderr and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def params_or_exit(params: Path | None, overrides: list[str] | None) -> Params:
    try:
        return load_params(params, overrides)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers happy


@app.command("params")
def show_params(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved params (params.yaml + overrides) and their hash."""
    import yaml

    p = params_or_exit(params, set_)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False).rstrip())
    typer.echo(f"# params hash: {p.hash()}")
