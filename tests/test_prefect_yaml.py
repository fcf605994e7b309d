"""prefect.yaml describes the deployments `tuneline deploy` makes (no server needed).

Each deployment in the file is compared, field by field, with what pipelines/deployments.py
builds from the project's params.yaml: so a change to either (a new parameter, another
cron in params.yaml) fails here until the other follows.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from prefect.events import DeploymentTriggerTypes
from pydantic import TypeAdapter

from components.config import DEFAULT_PARAMS, PROJECT_ROOT, load_params
from pipelines.deployments import TAGS, build_deployments, deployment_specs

PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


def _declared() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}


def _built() -> dict[str, tuple[dict[str, Any], Any]]:
    params = load_params(DEFAULT_PARAMS)
    specs = deployment_specs(params)
    return {s["name"]: (s, d) for s, d in zip(specs, build_deployments(params), strict=True)}


def _schedule(schedule: Any) -> dict[str, Any]:
    """A prefect.schedules.Schedule as prefect.yaml writes it: the kind and its timezone."""
    if schedule.cron is not None:
        return {"cron": schedule.cron, "timezone": schedule.timezone}
    assert schedule.interval is not None and schedule.timezone is None
    return {"interval": schedule.interval.total_seconds()}


def _in_project(parameters: dict[str, Any]) -> dict[str, Any]:
    """prefect.yaml names the params file from the project folder (where its runs start)."""
    out = dict(parameters)
    if "params_file" in out:
        out["params_file"] = str((PROJECT_ROOT / out["params_file"]).resolve())
    return out


def test_prefect_yaml_has_every_deployment_in_order():
    assert list(_declared()) == list(_built())


@pytest.mark.parametrize("name", [s["name"] for s in deployment_specs(load_params())])
def test_prefect_yaml_deployment_equals_the_built_one(name):
    declared, (spec, built) = _declared()[name], _built()[name]
    assert declared["entrypoint"] == spec["entrypoint"]
    assert declared["description"] == built.description
    assert declared["tags"] == built.tags == list(TAGS)
    assert declared["enforce_parameter_schema"] is built.enforce_parameter_schema is True
    assert _in_project(declared["parameters"]) == built.parameters
    schedules = [{**s, "interval": float(s["interval"])} if "interval" in s else s
                 for s in declared.get("schedules", [])]
    assert schedules == [_schedule(s) for s in spec.get("schedules") or []]
    triggers = [TypeAdapter(DeploymentTriggerTypes).validate_python(t)
                for t in declared.get("triggers", [])]
    assert [t.model_dump() for t in triggers] == [t.model_dump() for t in built.triggers]
    # deploy_to_pool adds one job variable, the record of the params file its runs check
    # requests against; without it they use the project's params.yaml, as these name.
    assert declared["work_pool"]["job_variables"] == {}


def test_prefect_yaml_runs_where_the_project_is():
    """No pull step: `prefect deploy` records the folder it runs in; the flows load from it."""
    document = yaml.safe_load(PREFECT_YAML.read_text())
    assert "pull" not in document and document["build"] is None and document["push"] is None
    assert {d["work_pool"]["name"] for d in document["deployments"]} == {"tuneline"}
    for declared in document["deployments"]:
        path, _, function = declared["entrypoint"].partition(":")
        assert f"def {function}(" in (PROJECT_ROOT / path).read_text()
