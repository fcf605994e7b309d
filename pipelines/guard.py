"""The flows' first step: a run started from a deployment asks; a local run decides.

A run has a deployment when the Prefect UI's form, a schedule or a `tuneline.data.changed`
event started it; its request is then checked against the params the deployments' runner
was started with (components/remote_runs.py) and refused, Failed with the reason, before
any work starts. A flow called from the shell (`tuneline run`, a test) is not checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect.runtime import deployment

from components.remote_runs import check_run_request, deployed_params


def check_deployment_request(overrides: list[str] | None, params_file: str | Path | None,
                             data_path: str | Path | None = None) -> None:
    """Raise RefusedRequest when this run comes from a deployment and asks for too much."""
    if deployment.id is None:
        return
    params, project_root = deployed_params(os.environ)
    check_run_request(params, overrides, params_file, data_path, project_root)
