"""The `tuneline` command line. Each stage family adds its commands in its own module."""

from pipelines.cli import (  # noqa: F401  (register commands)
    data,
    doctor,
    flows,
    models,
    serve,
    stages,
    sweep,
)
from pipelines.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
