"""The `tuneline` command line. Each stage family adds its commands in its own module."""

from pipelines.cli import data, flows, models, serve, stages  # noqa: F401  (register commands)
from pipelines.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
