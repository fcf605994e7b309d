"""Shared Typer app, options and error handling for every `tuneline` command."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

import pipelines  # noqa: F401  (environment defaults before any library import)
from components.config import (
    ConfigError,
    Params,
    PeftConfig,
    load_params,
    named_overrides,
    strategy_names,
)
from pipelines import DISTRIBUTION, package_version
from pipelines.quiet import log_level, use_log_level


class ExitCode(IntEnum):
    """What a `tuneline` command's exit status means; scripts can branch on it."""

    OK = 0
    ERROR = 1
    USAGE = 2
    DIVERGED = 3
    REJECTED = 4
    BUSY = 5
    SERVICE = 6


EXIT_MEANINGS = {
    ExitCode.OK: "done; a model it involved passed the gate (now or when registered)",
    ExitCode.ERROR: "an unexpected error (a bug): the traceback is printed",
    ExitCode.USAGE: "bad input or params, an unknown version, a stage input missing or stale",
    ExitCode.DIVERGED: "training diverged (a non-finite loss); nothing was registered",
    ExitCode.REJECTED: "the gate rejected the model: it is @challenger, @champion did not move",
    ExitCode.BUSY: ("another run holds this model or project folder (or took the model's slot "
                    "over mid-run): nothing was registered"),
    ExitCode.SERVICE: "MLflow, the DVC remote or the Prefect server failed or refused",
}
EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{c.value} {text}" for c, text in
                                              EXIT_MEANINGS.items()) + "."

app = typer.Typer(
    name="tuneline",
    help="Retrain, gate, export, promote and serve a transformer text classifier.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Log warnings and errors only: no stage lines, no training "
                              "progress, no Prefect run lines (results still print).")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log debug lines too, and the library notices hidden by "
                                "default.")] = False,
) -> None:
    """Retrain, gate, export, promote and serve a transformer text classifier."""
    if quiet and verbose:
        fail("--quiet and --verbose contradict each other: pick one")
    if quiet or verbose:
        ctx.with_resource(use_log_level(logging.WARNING if quiet else logging.DEBUG))


ParamsOpt = Annotated[
    Path | None, typer.Option("--params", help="params.yaml to read (default: the project's).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a param: --set finetune.strategy=mezo (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print the result as JSON on stdout (people's text goes to stderr).")]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="Also write the result as JSON to this file.")]
InputOpt = Annotated[Path | None, typer.Option(
    "--input", help="Labeled CSV / JSONL / Parquet, anywhere on disk: the same as "
                    "--set paths.raw=FILE (default: paths.raw, the demo corpus).")]

# Choices Typer checks and shell completion offers, read from what params.yaml accepts
# (the strategy sections of `finetune`, the values of `peft.method`), so they never drift.
Strategy = StrEnum("Strategy", {name: name for name in strategy_names()})
PeftMethod = StrEnum("PeftMethod", {name: name for name in
                                    get_args(PeftConfig.model_fields["method"].annotation)})

StrategyOpt = Annotated[Strategy | None, typer.Option(
    "--strategy", help="How the weights move (default: finetune.strategy).")]
PeftOpt = Annotated[PeftMethod | None, typer.Option(
    "--peft", help="Which weights train (default: peft.method).")]
PretrainOpt = Annotated[bool | None, typer.Option(
    "--pretrain/--no-pretrain", help="Domain pretraining first (default: pretrain.enabled).")]
StepsOpt = Annotated[int | None, typer.Option(
    "--max-steps", help="Training steps (default: finetune.max_steps).")]
NprocOpt = Annotated[int | None, typer.Option(
    "--nproc", min=1, help="Fine-tune as this many ranks under torchrun "
    "(default: finetune.nproc).")]


def fail(message: str, code: int = ExitCode.USAGE) -> None:
    """Print a clear one-line error to stderr and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(int(code))


def emit(result: dict[str, Any] | list[Any], text: str, *, as_json: bool,
         output: Path | None) -> None:
    """Report a result: JSON on stdout with --json (the text then goes to stderr), else the
    text on stdout; with -o FILE the JSON is also written there (atomically)."""
    if output is not None:
        from components.io import atomic_write_json

        atomic_write_json(output, result)
    if text:
        typer.echo(text, err=as_json)
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


def exit_for_verdict(passed: bool | None, reasons: list[str] | str = ()) -> None:
    """Exit with REJECTED (and one line on stderr) when a gate verdict rejected the model."""
    if passed is False:
        why = reasons if isinstance(reasons, str) else "; ".join(reasons)
        typer.secho(f"rejected: {why or 'the gate rejected the model'}", err=True,
                    fg=typer.colors.YELLOW)
        raise typer.Exit(int(ExitCode.REJECTED))


def params_or_exit(params: Path | None, overrides: list[str] | None, **named: object) -> Params:
    """params.yaml + named options (see `named_overrides`) + `--set`, validated; or exit 2."""
    try:
        return load_params(params, named_overrides(**named) + list(overrides or []))
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers happy


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and an ExitCode: bad input,
    stale or missing outputs, an unknown version (USAGE); a diverged run (DIVERGED); a
    rejection that params turn into a failed run (REJECTED); a busy project, or a run that
    lost its model's slot (BUSY); MLflow or the DVC remote failing (SERVICE)."""
    from components.data.files import DataValidationError
    from components.stages import DataRemoteError, DataVersionError, StaleInputError
    from components.stages.lock import ProjectBusy

    try:
        yield
    except typer.Exit:
        raise
    except ProjectBusy as exc:
        fail(str(exc), code=ExitCode.BUSY)
    except DataRemoteError as exc:
        fail(str(exc), code=ExitCode.SERVICE)
    except (DataValidationError, StaleInputError, DataVersionError, ConfigError,
            FileNotFoundError, LookupError) as exc:
        fail(str(exc).strip("'\""))
    except (ValueError, RuntimeError) as exc:
        if type(exc).__name__ == "RetrainSlotLost":  # pipelines/limits.py (imports prefect)
            fail(str(exc), code=ExitCode.BUSY)
        # The components' own errors name the problem; anything else is a bug: traceback.
        if not type(exc).__module__.startswith("components"):
            raise
        diverged = type(exc).__name__ == "TrainingDiverged"
        fail(str(exc), code=ExitCode.DIVERGED if diverged else ExitCode.USAGE)
    except Exception as exc:
        # MLflow refusing (401: set MLFLOW_TRACKING_USERNAME/PASSWORD) or unreachable.
        if not type(exc).__module__.startswith("mlflow"):
            raise
        fail(f"MLflow ({type(exc).__name__}): {str(exc).splitlines()[0]}",
             code=ExitCode.SERVICE)


def log_to_console() -> None:
    """Stage results and training progress on stderr, one line each (at the level -q / -v
    chose)."""
    logger = logging.getLogger("tuneline")
    if not any(getattr(h, "_tuneline", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._tuneline = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(log_level())


@app.command("params")
def show_params(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved params (params.yaml + overrides) and their hash."""
    import yaml

    p = params_or_exit(params, set_)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False).rstrip())
    typer.echo(f"# params hash: {p.hash()}")
