"""Drivers of the stage layer: the `tuneline` CLI and the Prefect flows.

Environment defaults are set here, before Prefect or any ML library is imported: no hub
downloads, no telemetry, and the `tuneline` loggers (stage results, training progress)
routed into Prefect's run logs.
"""

import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                     "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "PREFECT_LOGGING_EXTRA_LOGGERS": "tuneline",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

DISTRIBUTION = "tuneline"  # [project] name in pyproject.toml


def package_version() -> str:
    """The installed version of the tuneline package (from its metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"
