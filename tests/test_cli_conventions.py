"""The command line follows the conventions of dvc, mlflow and gh: `--version`; `--json`
prints JSON alone on stdout on every verb that reports; choices are checked by Typer (and
completed by the shell); grouped verbs keep their old names as hidden aliases; `predict`
reads stdin; `doctor` says what to fix.

The verbs that need a registered model share one tiny project: a copy of this one whose
chain ran once through `tuneline run --json`, as a user runs it.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import get_args

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from components.config import PeftConfig, strategy_names
from pipelines.cli import app
from tests.conftest import TINY_LABELS, tiny_overrides, tiny_rows
from tests.project_support import clone_project, env, tiny_sets

CLI = "from pipelines.cli import app; app()"
runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`tuneline ARGS` in its own process, in `cwd` (what a user's shell runs)."""
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=900)


def as_sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- no model needed


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(flag):
    result = invoke(flag)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"tuneline {version('tuneline')}"


def test_choices_come_from_params_and_reject_a_bad_value():
    from pipelines.cli.app import PeftMethod, Strategy

    assert [s.value for s in Strategy] == strategy_names()
    assert [m.value for m in PeftMethod] == list(
        get_args(PeftConfig.model_fields["method"].annotation))
    for args in (["run", "--strategy", "sgd"], ["sweep", "--peft", "adapter"]):
        result = invoke(*args)
        assert result.exit_code == 2 and "Invalid value" in result.stderr, result.output


def test_shell_completion_offers_the_choices():
    result = runner.invoke(app, [], prog_name="tuneline", env={
        "_TUNELINE_COMPLETE": "complete_bash", "COMP_WORDS": "tuneline run --peft pr",
        "COMP_CWORD": "3"})
    assert result.stdout.split() == ["prompt_tuning", "prefix_tuning"]


def test_old_names_are_hidden_aliases_of_the_grouped_verbs():
    root = get_command(app)
    for old, group in (("promote", "models"), ("rollback", "models"), ("ingest", "data")):
        alias, grouped = root.commands[old], root.commands[group].commands[old]
        assert alias.hidden and not grouped.hidden
        assert [p.name for p in alias.params] == [p.name for p in grouped.params]
        assert alias.help == grouped.help
    listed = invoke("--help").stdout
    assert re.search(r"^\W*models\s", listed, re.M)
    assert not re.search(r"^\W*(promote|rollback|ingest)\s", listed, re.M)


def test_quiet_keeps_the_result_and_drops_the_log_lines(tmp_path):
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(10)))
    sets = as_sets([o for o in tiny_overrides(tmp_path, tmp_path / "no-model")
                    if not o.startswith("paths.raw=")])       # FILE is the input
    loud = cli(tmp_path, "data", "ingest", str(data), "--json", *sets)
    quiet = cli(tmp_path, "-q", "data", "ingest", str(data), "--json", *sets)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "ingest:" in loud.stderr and "ingest:" not in quiet.stderr
    assert json.loads(quiet.stdout).keys() == json.loads(loud.stdout).keys()
    both = invoke("-q", "-v", "params")
    assert both.exit_code == 2 and "pick one" in both.stderr


def _doctor(tmp_path, monkeypatch, *extra: str):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = invoke("doctor", "--json", *as_sets(
        tiny_overrides(tmp_path, tmp_path / "no-model")), *extra)
    return result, json.loads(result.stdout)


def test_doctor_reports_each_check_as_json(tmp_path, monkeypatch):
    result, report = _doctor(tmp_path, monkeypatch)
    by_name = {c["name"]: c for c in report["checks"]}
    assert list(by_name) == ["python", "torch", "mlflow", "prefect", "dvc", "disk"]
    assert by_name["mlflow"]["status"] == "OK" and by_name["python"]["status"] == "OK"
    assert by_name["dvc"]["status"] == "WARN"          # a temp folder is no DVC project
    assert result.exit_code == report["exit_code"] == (0 if report["ok"] else 6)
    for check in report["checks"]:                     # one line each, for people
        assert f"{check['status']:<4}  {check['name']} " in result.stderr


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "sqlite:///{tmp}/missing/mlflow.db"])
def test_doctor_fails_on_a_bad_tracking_uri_with_the_service_exit_code(uri, tmp_path,
                                                                       monkeypatch):
    uri = uri.format(port=closed_port(), tmp=tmp_path)
    result, report = _doctor(tmp_path, monkeypatch, "--set", f"registry.tracking_uri={uri}")
    mlflow = next(c for c in report["checks"] if c["name"] == "mlflow")
    assert mlflow["status"] == "FAIL" and mlflow["fix"], mlflow
    assert result.exit_code == report["exit_code"] == 6
    assert "FAIL  mlflow" in result.stderr


# ---------------------------------------------------------------------------- a tiny project


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_backbone_dir):
    """A copy of the project whose chain ran once (`run --json`): v1 is the @champion."""
    root = tmp_path_factory.mktemp("cli-conventions")
    repo = clone_project(root / "repo")
    data = root / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(30)))
    sets = as_sets(tiny_sets(tiny_backbone_dir) + [f"paths.raw={data}"])
    proc = cli(repo, "run", "--strategy", "adamw", "--peft", "none", "--json", *sets)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"repo": repo, "data": data, "sets": sets, "summary": json.loads(proc.stdout)}


@pytest.fixture()
def in_project(project, monkeypatch):
    monkeypatch.chdir(project["repo"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return project


@pytest.mark.integration
@pytest.mark.slow
def test_every_reporting_verb_prints_json_alone_on_stdout(in_project, tmp_path):
    summary = in_project["summary"]
    assert summary["version"] == "1" and summary["gate_passed"] is True
    data, sets = str(in_project["data"]), in_project["sets"]
    verbs = [["models"], ["models", "show", "1"], ["stages"], ["data", "ingest", data],
             ["ingest", data], ["data", "version"], ["prepare"], ["pretrain"], ["finetune"],
             ["compress"], ["evaluate"], ["export"], ["gate"], ["register"],
             ["data", "restore", "champion", "--out", str(tmp_path / "back")]]
    out = {}
    for verb in verbs:
        result = invoke(*verb, "--json", *sets)
        assert result.exit_code == 0, (verb, result.output)
        out[" ".join(verb[:2])] = json.loads(result.stdout)
    assert [row["version"] for row in out["models"]] == ["1"]
    assert out["models show"]["lineage"]["strategy"] == "adamw"
    assert out["models show"]["aliases"] == ["champion"]
    assert [row["stage"] for row in out["stages"]][:2] == ["ingest", "prepare"]
    assert out["register"]["version"] == "1" and out["gate"]["passed"] is True
    assert set(out["data restore"]["restored"]) == {
        "input_version", "unlabeled_version", "data_version"}
    assert out["ingest " + data].keys() == out["data ingest"].keys()

    written = tmp_path / "show.json"
    assert invoke("models", "show", "1", "-o", str(written), *sets).exit_code == 0
    assert json.loads(written.read_text()) == out["models show"]

    doctor = invoke("doctor", "--json", *sets)
    checks = {c["name"]: c["status"] for c in json.loads(doctor.stdout)["checks"]}
    assert checks["dvc"] == "OK" and checks["mlflow"] == "OK", doctor.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_models_promote_and_rollback_and_their_old_names(in_project):
    sets = in_project["sets"] + ["--set", "gate.max_latency_p95_ms=5001"]  # a new release
    assert invoke("gate", "--json", *sets).exit_code == 0
    second = json.loads(invoke("register", "--json", *sets).stdout)
    assert second["version"] == "2" and second["passed"]

    back = invoke("models", "rollback", "--reason", "check", "--json", *sets)
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["version"] == "1" and "rolled back" in back.stderr
    again, alias = (invoke(*verb, "--reason", "again", *sets)
                    for verb in (["models", "rollback"], ["rollback"]))
    assert again.exit_code == alias.exit_code == 2 and "no @previous" in alias.stderr
    assert again.stderr == alias.stderr

    for verb in (["promote"], ["models", "promote"]):    # the second changes nothing
        forward = invoke(*verb, "2", "--reason", "by hand", "--json", *sets)
        aliases = json.loads(forward.stdout)["aliases"]
        assert {a: str(v) for a, v in aliases.items()} == {"champion": "2", "previous": "1"}
    missing = [invoke(*verb, "9", *sets) for verb in (["models", "promote"], ["promote"])]
    assert {r.exit_code for r in missing} == {2} and missing[0].stderr == missing[1].stderr


@pytest.mark.integration
@pytest.mark.slow
def test_predict_reads_texts_from_stdin_and_prints_json_lines(in_project, tmp_path):
    texts = ["football match goal team", "rain cloud storm", "stock market bank price"]
    result = invoke("predict", "-i", "-", *in_project["sets"],
                    input=texts[0] + "\n\n" + "\n".join(texts[1:]) + "\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == texts            # the blank line is skipped
    assert all(line["label"] in TINY_LABELS and line["model_version"] for line in lines)

    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    from_file = invoke("predict", "-i", str(tmp_path / "texts.txt"), *in_project["sets"])
    assert from_file.stdout == result.stdout
    args = invoke("predict", *texts[:2], *in_project["sets"])
    assert [p["label"] for p in json.loads(args.stdout)["predictions"]] == [
        line["label"] for line in lines[:2]]
    both = invoke("predict", "x", "-i", "-", *in_project["sets"], input="y\n")
    assert both.exit_code == 2 and "not both" in both.stderr
