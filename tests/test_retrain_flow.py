"""The retrain flow for real on a tiny model: MLflow run, lineage, version, alias; no work
twice; new data retrains; the data sensor sees the change."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from components.config import load_params
from components.data.files import data_version, md5_file
from components.io import sha256_file
from pipelines.retrain import retrain
from pipelines.sensor import data_changed
from tests.conftest import tiny_overrides, tiny_rows


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_retrain_registers_promotes_skips_unchanged_and_retrains_on_new_data(
        tmp_path, tiny_backbone_dir, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw.jsonl"
    _write_rows(raw, tiny_rows(n_per_class=40))
    overrides = tiny_overrides(tmp_path, tiny_backbone_dir) + [
        "gate.min_metrics={accuracy: 0.34}", "gate.max_latency_p95_ms=1000"]
    params = load_params(overrides=overrides)
    client = MlflowClient(params.registry.tracking_uri)
    name = params.registry.model_name

    first = retrain(overrides=overrides)

    assert first["status"] == "promoted" and first["version"] == "1"
    run = client.get_run(first["run_id"])
    tags = run.data.tags
    assert tags["data_version"] == data_version(params.paths.prepared)
    assert tags["raw_data_hash"] == md5_file(raw)
    assert tags["input_version"] == data_version(params.paths.input / "labeled")
    assert tags["params_hash"] == params.hash()
    assert (tags["strategy"], tags["peft_method"]) == ("adamw", "none")
    assert len(tags["git_commit"]) >= 7
    assert run.data.params["finetune.max_steps"] == "30"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) == 30
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == "1" and champion.run_id == run.info.run_id
    assert champion.tags["sha256"] == sha256_file(params.paths.export / "model.int8.onnx")
    assert data_changed(overrides=overrides)["changed"] is False

    weights = params.paths.model / "model.safetensors"
    trained_at = weights.stat().st_mtime_ns
    result = CliRunner().invoke(__import__("pipelines.cli", fromlist=["app"]).app,
                                ["run", *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    assert "unchanged" in result.output and "v1" in result.output
    assert weights.stat().st_mtime_ns == trained_at           # training did not run again
    assert len(client.search_runs([run.info.experiment_id])) == 1

    _write_rows(raw, tiny_rows(n_per_class=40) + tiny_rows(n_per_class=10, seed=5))
    assert data_changed(overrides=overrides)["changed"] is True
    third = retrain(overrides=overrides)
    assert third["version"] == "2" and third["run_id"] != first["run_id"]
    assert weights.stat().st_mtime_ns != trained_at
    assert client.get_run(third["run_id"]).data.tags["data_version"] != tags["data_version"]
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    if third["status"] == "promoted":
        assert aliases == {"champion": "2", "previous": "1"}
    else:
        assert aliases == {"champion": "1", "challenger": "2"}
