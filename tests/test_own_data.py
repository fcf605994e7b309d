"""A user's own data, end to end, in a fresh copy of the project: a CSV outside the project
is trained on, versioned in DVC (dvc.lock + remote), and restored byte for byte from the
remote alone after the data and the DVC cache are deleted; a version registered with the
CLI carries the same lineage as one from the flow, and the data sensor reads either."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml

from components.data.files import md5_file
from tests.conftest import tiny_rows
from tests.project_support import BIN, clone_project, run, tiny_sets

LINEAGE = ("raw_data_hash", "input_version", "unlabeled_version", "data_version",
           "git_commit", "model_fingerprint", "strategy", "peft_method",
           "backbone", "raw_source")


def _write_csv(path, rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)


def _tags(params, version: str) -> dict[str, str]:
    from components.registry.versions import version_tags

    return version_tags(params, version)[1]


@pytest.mark.integration
@pytest.mark.slow
def test_own_csv_is_trained_versioned_restored_and_traced(tmp_path, tiny_backbone_dir,
                                                          monkeypatch):
    from components.config import load_params
    from pipelines.sensor import data_changed

    repo = clone_project(tmp_path / "repo")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    data, notes = outside / "tickets.csv", outside / "notes.txt"
    _write_csv(data, tiny_rows(30))
    notes.write_text("\n".join(r["text"] for r in tiny_rows(20, seed=9)) + "\n")
    sets = tiny_sets(tiny_backbone_dir) + [f"paths.unlabeled={notes}"]
    set_args = [a for s in sets for a in ("--set", s)]

    run(repo, str(BIN / "tuneline"), "run", "--input", str(data), *set_args)

    monkeypatch.chdir(repo)
    params = load_params(overrides=sets + [f"paths.raw={data}"])
    flow_tags = _tags(params, "1")
    assert flow_tags["raw_data_hash"] == md5_file(data)
    assert flow_tags["raw_source"] == str(data)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    outs = {o["path"]: o["md5"] for stage in ("ingest", "prepare") for o in lock[stage]["outs"]
            if o["path"].startswith("data/")}
    assert outs == {"data/input/labeled": flow_tags["input_version"],
                    "data/input/unlabeled": flow_tags["unlabeled_version"],
                    "data/prepared": flow_tags["data_version"]}
    remote = repo / ".dvc-storage" / "files" / "md5"
    for value in outs.values():
        assert (remote / value[:2] / value[2:]).is_file()     # pushed, .dir listing and all

    prepared_before = {p.name: p.read_bytes() for p in (repo / "data" / "prepared").iterdir()}
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run(repo, str(BIN / "tuneline"), "data", "restore", "1", "--out", str(tmp_path / "back"))
    back = tmp_path / "back"
    assert (back / "input" / "labeled" / "labeled.csv").read_bytes() == data.read_bytes()
    assert (back / "input" / "unlabeled" / "unlabeled.txt").read_bytes() == notes.read_bytes()
    assert {p.name: p.read_bytes() for p in (back / "prepared").iterdir()} == prepared_before

    # A folder that holds files is not replaced unless asked; nothing in it is lost.
    refused = run(repo, str(BIN / "tuneline"), "data", "restore", "1", "--out", str(back),
                  ok=False)
    assert refused.returncode == 2 and "not an empty folder" in refused.stderr
    assert (back / "input" / "labeled" / "labeled.csv").exists()
    run(repo, str(BIN / "tuneline"), "data", "restore", "1", "--out", str(back), "--force")
    # A registry tag is data, never a path.
    from components.registry.versions import get_client

    get_client(params).set_model_version_tag(params.registry.model_name, "1",
                                             "input_version", "../../../etc")
    tampered = run(repo, str(BIN / "tuneline"), "data", "restore", "1", "--out",
                   str(tmp_path / "back2"), ok=False)
    assert tampered.returncode == 2 and "not a DVC md5 hash" in tampered.stderr
    assert not (tmp_path / "back2").exists()
    get_client(params).set_model_version_tag(params.registry.model_name, "1",
                                             "input_version", flow_tags["input_version"])

    # The same model judged by other export settings, registered from the CLI verbs.
    cli_sets = set_args + ["--set", f"paths.raw={data}", "--set", "export.latency_repeats=4"]
    for verb in ("ingest", "prepare", "pretrain", "finetune", "evaluate", "export", "gate",
                 "register"):
        said = run(repo, str(BIN / "tuneline"), verb, *cli_sets).stderr
    assert said.strip().splitlines()[-1].startswith("register: v2 (gate passed)"), said
    cli_tags = _tags(params, "2")
    assert {k: cli_tags[k] for k in LINEAGE} == {k: flow_tags[k] for k in LINEAGE}
    assert set(cli_tags) == set(flow_tags)
    for changed in ("release_fingerprint", "params_hash"):    # export settings differ
        assert cli_tags[changed] != flow_tags[changed]
    shown = run(repo, str(BIN / "tuneline"), "models", "show", "1", *cli_sets).stdout
    assert flow_tags["data_version"] in shown and flow_tags["git_commit"] in shown
    assert "differ from @champion v2" in shown and "export.latency_repeats" in shown

    from components.registry.versions import get_alias_version

    assert get_alias_version(params, "champion") == "2"       # the CLI's version serves
    assert data_changed(overrides=sets + [f"paths.raw={data}"])["changed"] is False
    _write_csv(data, tiny_rows(30) + tiny_rows(3, seed=4))
    state = data_changed(overrides=sets + [f"paths.raw={data}"])
    assert state["changed"] is True and state["champion"] == "2"
    assert json.loads((repo / "metrics" / "register.json").read_text())["version"] == "2"


@pytest.mark.integration
@pytest.mark.slow
def test_an_unreachable_dvc_remote_fails_the_run_before_anything_is_registered(
        tmp_path, tiny_backbone_dir, monkeypatch):
    from components.config import load_params
    from components.registry.versions import list_versions

    repo = clone_project(tmp_path / "repo")
    (repo / "not-a-folder").write_text("a file where the remote's folder should be\n")
    run(repo, "dvc", "remote", "modify", "local", "url", "not-a-folder/store")  # from cwd
    sets = tiny_sets(tiny_backbone_dir)
    failed = run(repo, str(BIN / "tuneline"), "run",
                 *[a for s in sets for a in ("--set", s)], ok=False)
    assert failed.returncode == 6, failed.stderr[-3000:]
    # Prefect logs the failed task's traceback; the CLI's last word is one line.
    assert failed.stderr.strip().splitlines()[-1].startswith("error: DVC push failed")
    monkeypatch.chdir(repo)
    assert list_versions(load_params(overrides=sets)) == []   # nothing registered
    assert not (repo / "artifacts" / "model").exists()         # nothing trained
