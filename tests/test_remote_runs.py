"""What a run started from a deployment may ask for: the allowlist of keys, the rank cap, a
params file inside the project, a data file inside the project or a data root.

The last test serves the real deployments on a real Prefect server and starts refused runs
through the API, as the UI's form and a new-data event do: each ends Failed with the
reason, and nothing was written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from components.config import ConfigError, load_params
from components.remote_runs import (
    RefusedRequest,
    check_run_request,
    deployed_params,
    deployed_with,
)
from tests.conftest import tiny_rows
from tests.prefect_support import (
    BIN,
    SERVER_TIMEOUT_S,
    Proc,
    running,
    tiny_project_server,
    wait_for,
)

ALLOWED = "finetune.*, peft.*, pretrain.*, compress.*, model.*, gate.*, schedule.when_busy"
KEY_RULE = f"a run started from a deployment may set only the keys in ui.allowed_overrides " \
           f"({ALLOWED})"
STAY = "where a run started from a deployment must stay"


@pytest.fixture()
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "params.yaml").write_text("{}\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "params.yaml").write_text("{}\n")
    return root


def _check(project: Path, overrides=None, params_file=None, data_path=None, params=None):
    check_run_request(params or load_params(), overrides, params_file, data_path, project)


def test_training_model_and_gate_keys_are_accepted(project):
    _check(project, overrides=["finetune.strategy=mezo", "finetune.adamw.lr=1.0e-4",
                               "peft.method=lora", "pretrain.enabled=true",
                               "compress.enabled=true", "model.max_length=128",
                               "gate.min_metrics={accuracy: 0.0}", "schedule.when_busy=skip",
                               "finetune.nproc=2"],
           params_file=project / "params.yaml", data_path=project / "data" / "new.jsonl")


def test_values_the_deployment_already_has_are_accepted(project):
    # The form is filled with them and a schedule sends them as they are.
    _check(project, overrides=["paths.raw=data/demo/labeled.jsonl",
                               "registry.tracking_uri=sqlite:///mlflow.db",
                               "paths.model=artifacts/model"],
           data_path="data/demo/labeled.jsonl")


@pytest.mark.parametrize(("override", "key"), [
    ("paths.model=/tmp/anywhere", "paths.model"),
    ("paths.prepared=../../elsewhere", "paths.prepared"),
    ("paths={model: /tmp/anywhere}", "paths"),
    ("registry.tracking_uri=sqlite:////tmp/anywhere/mlflow.db", "registry.tracking_uri"),
    ("registry.artifact_root=/tmp/anywhere", "registry.artifact_root"),
    ("ui.allowed_overrides=['*']", "ui.allowed_overrides"),
    ("finetune={nproc: 1}", "finetune"),          # a whole section is not finetune.*
])
def test_keys_outside_the_allowlist_are_refused(project, override, key):
    with pytest.raises(RefusedRequest) as err:
        _check(project, overrides=["finetune.max_steps=10", override])
    assert str(err.value) == f"refused override {key}: {KEY_RULE}"
    assert isinstance(err.value, ConfigError)


def test_nproc_above_ui_max_nproc_is_refused(project):
    with pytest.raises(RefusedRequest) as err:
        _check(project, overrides=["finetune.nproc=64"])
    assert str(err.value) == ("refused override finetune.nproc=64: a run started from a "
                              "deployment may start at most ui.max_nproc=2 ranks")
    # ... also when an allowlist of everything lets a whole section through.
    params = load_params(overrides=["ui.allowed_overrides=['*']", "ui.max_nproc=4"])
    with pytest.raises(RefusedRequest, match=r"finetune.nproc=5: .* ui.max_nproc=4 ranks"):
        _check(project, overrides=["finetune={nproc: 5}"], params=params)
    _check(project, overrides=["finetune.nproc=4"], params=params)


def test_params_file_escaping_the_project_by_dotdot_is_refused(project):
    escape = project / ".." / "outside" / "params.yaml"
    with pytest.raises(RefusedRequest) as err:
        _check(project, params_file=escape)
    assert str(err.value) == (
        f"refused params_file {escape}: it resolves to {project.parent / 'outside/params.yaml'}"
        f", outside the project folder {project}, {STAY}")


def test_params_file_symlinked_out_of_the_project_is_refused(project):
    link = project / "params-link.yaml"
    link.symlink_to(project.parent / "outside" / "params.yaml")
    with pytest.raises(RefusedRequest) as err:
        _check(project, params_file=link)
    assert str(err.value) == (
        f"refused params_file {link}: it resolves to {project.parent / 'outside/params.yaml'}"
        f", outside the project folder {project}, {STAY}")
    (project / "local.yaml").symlink_to(project / "params.yaml")
    _check(project, params_file=project / "local.yaml")    # a link that stays inside


def test_data_path_outside_the_project_and_data_roots_is_refused(project):
    outside = project.parent / "outside" / "new.jsonl"
    with pytest.raises(RefusedRequest) as err:
        _check(project, data_path=outside)
    assert str(err.value) == (
        f"refused data_path {outside}: it resolves to {outside}, outside the project folder "
        f"{project} and ui.data_roots (none set), {STAY}")
    drop = project.parent / "drop"
    drop.mkdir()
    (project / "data" / "link.jsonl").symlink_to(outside)
    params = load_params(overrides=[f"ui.data_roots=[{drop}]"])
    with pytest.raises(RefusedRequest) as err:
        _check(project, data_path=project / "data" / "link.jsonl", params=params)
    assert str(err.value) == (
        f"refused data_path {project / 'data/link.jsonl'}: it resolves to {outside}, outside "
        f"the project folder {project} and ui.data_roots ({drop}), {STAY}")
    _check(project, data_path=drop / "new.jsonl", params=params)      # a data root


def test_an_allowed_data_key_still_keeps_to_the_data_roots(project):
    params = load_params(overrides=["ui.allowed_overrides=[paths.raw]", "ui.data_roots=[drop]"])
    _check(project, overrides=[f"paths.raw={project / 'drop' / 'x.csv'}"], params=params)
    with pytest.raises(RefusedRequest, match=r"^refused paths.raw /etc/x.csv: .* ui.data_roots "
                                             rf"\({project / 'drop'}\)"):
        _check(project, overrides=["paths.raw=/etc/x.csv"], params=params)


def test_the_runner_records_what_it_was_deployed_with(project):
    env = deployed_with(project / "params.yaml", ["ui.max_nproc=8", "finetune.nproc=3"])
    params, root = deployed_params(env)
    assert root == project and params.ui.max_nproc == 8 and params.finetune.nproc == 3
    _check(project, overrides=["finetune.nproc=8"], params=params)   # the deployed cap


def test_only_a_run_from_a_deployment_is_checked(project, monkeypatch):
    from prefect.context import _deployment_id

    from pipelines.guard import check_deployment_request

    request = (["paths.model=/tmp/anywhere"], None)
    check_deployment_request(*request)                       # the shell: anything goes
    monkeypatch.setenv("TUNELINE_DEPLOYED_WITH",
                       json.dumps({"params_file": str(project / "params.yaml")}))
    token = _deployment_id.set(uuid.uuid4())                 # as inside a deployment's run
    try:
        with pytest.raises(RefusedRequest, match="refused override paths.model"):
            check_deployment_request(*request)
    finally:
        _deployment_id.reset(token)


def _failed_with(api, run: dict, message: str, procs: list[Proc]) -> None:
    final = api.wait_final(run["id"], 600, procs)
    assert final["state"]["type"] == "FAILED", (final["state"], procs[-1].tail())
    assert message in final["state"]["message"], final["state"]["message"]


@pytest.mark.integration
@pytest.mark.slow
def test_served_deployment_refuses_before_any_work(tmp_path, tmp_path_factory,
                                                    tiny_backbone_dir):
    outside = tmp_path_factory.mktemp("outside")
    with tiny_project_server(tmp_path, tiny_backbone_dir) as project:
        params_file, env, server, api = (project.params_file, project.env, project.server,
                                         project.api)
        shutil.copy(params_file, outside / "params.yaml")
        runner = Proc([str(BIN / "tuneline"), "deploy", "--params", str(params_file),
                       "--limit", "2"], env, tmp_path, tmp_path / "deploy.log")
        procs = [server, runner]
        with running(runner):
            wait_for(lambda: api.deployment("retrain"), SERVER_TIMEOUT_S, "the deployment",
                     procs)
            refused = {
                "refused override paths.prepared: ": {
                    "overrides": [f"paths.prepared={outside / 'prepared'}"]},
                "refused override registry.tracking_uri: ": {
                    "overrides": [f"registry.tracking_uri=sqlite:///{outside}/mlflow.db"]},
                "refused override finetune.nproc=64: ": {"nproc": 64},
                f"refused params_file {tmp_path}/../{outside.name}/params.yaml: ": {
                    "params_file": f"{tmp_path}/../{outside.name}/params.yaml"},
            }
            runs = {message: api.create_run("retrain", parameters)
                    for message, parameters in refused.items()}
            for message, run in runs.items():
                _failed_with(api, run, message, procs)
            assert sorted(p.name for p in outside.iterdir()) == ["params.yaml"]
            for folder in ("input", "prepared", "model", "mlflow.db"):  # no stage ran
                assert not (tmp_path / folder).exists(), folder

            # New data announced from outside the project and ui.data_roots.
            drop = outside / "drop.jsonl"
            drop.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(20, seed=3)))
            subprocess.run([str(BIN / "tuneline"), "ingest", str(drop), "--notify",
                            "--params", str(params_file)], env=env, cwd=tmp_path, check=True,
                           capture_output=True, timeout=600)
            run = wait_for(lambda: next((r for r in api.flow_runs("retrain")
                                         if r["parameters"].get("data_path") == str(drop)),
                                        None), 120, "the retrain run of the event", procs)
            _failed_with(api, run, f"refused data_path {drop}: ", procs)
            assert not (tmp_path / "prepared").exists()
