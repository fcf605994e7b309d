"""The deployments as the Prefect UI reads them: plain typed retrain and sweep forms filled
with params.yaml's values, and the new-data trigger (no server needed)."""

from __future__ import annotations

from components.config import DEFAULT_PARAMS, load_params
from pipelines.deployments import build_deployments, deployment_specs, run_forms


def _by_name(params, **kw) -> dict:
    return {d.name: d for d in build_deployments(params, **kw)}


def test_retrain_form_is_plain_typed_fields_with_params_yaml_values():
    params = load_params(overrides=["finetune.strategy=es", "finetune.max_steps=77"])
    retrain = _by_name(params)["retrain"]
    schema = run_forms(params)["retrain"]
    props = schema["properties"]
    assert retrain.enforce_parameter_schema is True
    for name, prop in props.items():
        assert "anyOf" not in prop, name                      # no `str | None` toggle
        assert prop["description"] and "\n" not in prop["description"], name
    assert props["strategy"]["enum"] == ["adamw", "cem", "es", "mezo", "zo_sign"]
    assert props["peft_method"]["enum"][0] == "none" and "lora" in props["peft_method"]["enum"]
    assert props["pretrain"]["type"] == "boolean" and props["max_steps"]["minimum"] == 1
    assert props["nproc"]["minimum"] == 1 and "finetune.nproc" in props["nproc"]["description"]
    assert props["overrides"] == {**props["overrides"], "type": "array",
                                  "items": {"type": "string"}}
    # The form starts at what params.yaml (+ the deploy's overrides) says.
    assert retrain.parameters == {
        "data_path": str(params.paths.raw), "strategy": "es", "peft_method": "none",
        "pretrain": False, "max_steps": 77, "nproc": 1, "overrides": [],
        "params_file": str(DEFAULT_PARAMS)}
    assert {k: p["default"] for k, p in props.items()} == retrain.parameters
    assert "finetune.strategy" in props["strategy"]["description"]


def test_sweep_form_is_plain_typed_fields_with_params_yaml_values():
    params = load_params(overrides=["sweep.n_trials=9", "finetune.strategy=mezo"])
    sweep = _by_name(params)["sweep"]
    props = run_forms(params)["sweep"]["properties"]
    assert sweep.enforce_parameter_schema is True and sweep.schedules == []
    assert list(props) == ["data_path", "strategy", "peft_method", "pretrain", "max_steps",
                           "n_trials", "dask_address", "overrides", "params_file"]
    for name, prop in props.items():
        assert "anyOf" not in prop, name
        assert prop["description"] and "\n" not in prop["description"], name
    assert props["strategy"]["enum"] == ["adamw", "cem", "es", "mezo", "zo_sign"]
    assert props["n_trials"]["type"] == "integer" and props["n_trials"]["minimum"] == 1
    assert "sweep.n_trials" in props["n_trials"]["description"]
    assert props["dask_address"]["type"] == "string"
    # An empty address is a local cluster; the schema's type still holds for it.
    assert sweep.parameters == {
        "data_path": str(params.paths.raw), "strategy": "mezo", "peft_method": "none",
        "pretrain": False, "max_steps": None, "n_trials": 9,  # max_steps auto: empty
        "dask_address": "", "overrides": [], "params_file": str(DEFAULT_PARAMS)}
    assert {k: p["default"] for k, p in props.items()} == sweep.parameters


def test_promote_and_rollback_forms_require_a_reason():
    params = load_params()
    assert set(_by_name(params)) == {"retrain", "watch-data", "promote", "rollback", "sweep"}
    forms = run_forms(params)
    promote, rollback = forms["promote"], forms["rollback"]
    assert promote["required"] == ["version", "reason"]
    assert promote["properties"]["version"]["type"] == "integer"
    assert rollback["required"] == ["reason"]
    assert rollback["properties"]["reason"]["minLength"] == 1


def test_retrain_is_triggered_once_per_hash_within_dedupe_s():
    params = load_params(overrides=["schedule.dedupe_s=120"])
    (trigger,) = next(s for s in deployment_specs(params) if s["name"] == "retrain")["triggers"]
    assert trigger.expect == {"tuneline.data.changed"}
    assert trigger.for_each == {"prefect.resource.id"}          # the resource id is the md5
    assert trigger.within.total_seconds() == 120 and trigger.threshold == 1
    assert trigger.parameters == {"data_path": "{{ event.payload.file }}"}
