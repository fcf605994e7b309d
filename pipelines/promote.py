"""`promote` and `rollback`: the registry's human overrides as flows, runnable from the UI.

They call the same functions as `tuneline models promote` / `tuneline models rollback`
(components/registry/versions.py), so a move made from the Prefect UI is recorded on the version
like one made from the shell: who (the name typed in the form, else the user running the
flow, and the flow run), when and why. Each holds the model's retrain slot while it moves
the aliases (pipelines/limits.py), so it never lands between a retrain's gate and its
registration; a person's move waits for a running retrain rather than being skipped.
"""

from __future__ import annotations

import getpass
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from components.config import load_params
from pipelines.events import emit_model_event
from pipelines.guard import check_deployment_request
from pipelines.limits import one_retrain_per_model


def _who(requested_by: str) -> str:
    return f"{requested_by.strip() or getpass.getuser()} (Prefect flow run {flow_run.name})"


@flow(name="promote", description="Make a model version the @champion by hand "
                                  "(whatever its gate verdict said); recorded on the version.")
def promote(version: Annotated[int, Field(ge=1)], reason: Annotated[str, Field(min_length=1)],
            requested_by: str = "", params_file: str = "") -> dict[str, Any]:
    """Make VERSION the @champion; the old one becomes @previous.

    Args:
        version: The registered model version to serve (`tuneline models` or MLflow's UI
            lists them with their gate verdicts).
        reason: Why, recorded on the version in MLflow (e.g. an incident number).
        requested_by: Your name, recorded as who asked (empty: the user running the flow).
        params_file: The params.yaml naming the registry and model (empty: the project's).
    """
    from components.registry.versions import promote as promote_version

    check_deployment_request(None, params_file)
    params = load_params(params_file or None)
    logger = get_run_logger()
    with one_retrain_per_model(params, logger, when_busy="wait"):
        result = promote_version(params, str(version), reason, by=_who(requested_by))
    logger.info("promoted %s v%s by hand: %s", params.registry.model_name, result["version"],
                ", ".join(result["moves"]))
    emit_model_event(params, "promoted", result["version"], reasons=[reason],
                     moves=result["moves"], by=_who(requested_by))
    return result


@flow(name="rollback", description="Make the @previous version the @champion again; "
                                   "recorded on the demoted version.")
def rollback(reason: Annotated[str, Field(min_length=1)], requested_by: str = "",
             params_file: str = "") -> dict[str, Any]:
    """Make the @previous version the @champion again.

    Args:
        reason: Why, recorded on the demoted version in MLflow (e.g. an incident number).
        requested_by: Your name, recorded as who asked (empty: the user running the flow).
        params_file: The params.yaml naming the registry and model (empty: the project's).
    """
    from components.registry.versions import rollback as rollback_champion

    check_deployment_request(None, params_file)
    params = load_params(params_file or None)
    logger = get_run_logger()
    with one_retrain_per_model(params, logger, when_busy="wait"):
        result = rollback_champion(params, reason, by=_who(requested_by))
    logger.info("rolled back %s: v%s -> v%s (%s)", params.registry.model_name,
                result["demoted"], result["version"], ", ".join(result["moves"]))
    emit_model_event(params, "rolled-back", result["version"], reasons=[reason],
                     moves=result["moves"], by=_who(requested_by))
    return result
