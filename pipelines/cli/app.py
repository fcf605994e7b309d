"""Shared Typer app, options and error handling for every `tuneline` command."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

import pipelines  # noqa: F401  (environment defaults before any library import)
from components.config import ConfigError, Params, load_params, named_overrides

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
InputOpt = Annotated[Path | None, typer.Option(
    "--input", help="Labeled CSV / JSONL / Parquet, anywhere on disk: the same as "
                    "--set paths.raw=FILE (default: paths.raw, the demo corpus).")]


def fail(message: str, code: int = 2) -> None:
    """Print a clear one-line error to stderr and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def params_or_exit(params: Path | None, overrides: list[str] | None, **named: object) -> Params:
    """params.yaml + named options (see `named_overrides`) + `--set`, validated; or exit 2."""
    try:
        return load_params(params, named_overrides(**named) + list(overrides or []))
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers happy


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad input, stale or missing outputs, an unknown
    version) into one line on stderr and exit code 2; a diverged run exits 3."""
    from components.data_io import DataValidationError
    from components.stages import DataVersionError, StaleInputError

    try:
        yield
    except typer.Exit:
        raise
    except (DataValidationError, StaleInputError, DataVersionError, ConfigError,
            FileNotFoundError, LookupError) as exc:
        fail(str(exc).strip("'\""))
    except (ValueError, RuntimeError) as exc:
        # The components' own errors name the problem; anything else is a bug: traceback.
        if not type(exc).__module__.startswith("components"):
            raise
        fail(str(exc), code=3 if type(exc).__name__ == "TrainingDiverged" else 2)
    except Exception as exc:
        # MLflow refusing (401: set MLFLOW_TRACKING_USERNAME/PASSWORD) or unreachable.
        if not type(exc).__module__.startswith("mlflow"):
            raise
        fail(f"MLflow ({type(exc).__name__}): {str(exc).splitlines()[0]}")


def log_to_console() -> None:
    """Stage results and training progress on stderr, one line each."""
    logger = logging.getLogger("tuneline")
    if not any(getattr(h, "_tuneline", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._tuneline = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@app.command("params")
def show_params(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved params (params.yaml + overrides) and their hash."""
    import yaml

    p = params_or_exit(params, set_)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False).rstrip())
    typer.echo(f"# params hash: {p.hash()}")
