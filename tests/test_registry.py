"""MLflow tracking and registry on a real SQLite store in a temp folder.

Two tiny trained bundles play the models: "good" (near-perfect on the tiny test split) and
"swapped" (trained with two labels swapped: confidently wrong on them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.evaluate.drift import REFERENCE_FILE
from components.registry import tracking
from components.registry import versions as registry
from components.release.export import served_files
from components.release.gate import run_gate
from components.release.predictor import INT8_MODEL, BundleIntegrityError, OnnxClassifier
from tests.model_support import tiny_overrides, tiny_test_params, trained_bundle

PERMISSIVE = ["gate.min_metrics.accuracy=0.0", "gate.min_metrics.macro_f1=0.0"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_backbone_dir):
    return {kind: trained_bundle(tmp_path_factory, tiny_backbone_dir, kind)
            for kind in ("good", "swapped")}


def judge_and_publish(params, bundle: dict[str, Path], work: Path) -> dict:
    """What the retraining flow does after export: run, gate vs champion, register."""
    run_id = tracking.start_run(params, bundle["prepared"])
    champion = registry.champion_bundle(params, work / f"champion-{run_id}")
    verdict = run_gate(bundle["bundle"], bundle["prepared"], params, champion)
    result = registry.publish(params, run_id, bundle["bundle"], verdict,
                              prepared_dir=bundle["prepared"])
    tracking.end_run(params, run_id)
    return result


def aliases(params) -> dict[str, str]:
    return {a: registry.get_alias_version(params, a) for a in ("champion", "previous",
                                                                 "challenger")}


def tags(params, version: str) -> dict[str, str]:
    return next(r["tags"] for r in registry.list_versions(params) if r["version"] == version)


def test_promotion_lifecycle(bundles, tmp_path, tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir, PERMISSIVE)
    good, swapped = bundles["good"], bundles["swapped"]

    # 1. First model: no champion yet, absolute rules only -> promoted.
    first = judge_and_publish(params, swapped, tmp_path)
    assert first["passed"] and first["version"] == "1"
    assert aliases(params) == {"champion": "1", "previous": None, "challenger": None}
    assert tags(params, "1")["gate_first_model"] == "true"

    # 2. A better challenger: promoted, the old champion becomes @previous.
    second = judge_and_publish(params, good, tmp_path)
    assert second["passed"] and second["moves"] == ["@previous -> v1", "@champion -> v2"]
    assert aliases(params) == {"champion": "2", "previous": "1", "challenger": None}

    # 3. A worse one: stays @challenger, @champion does not move, the reason is recorded.
    third = judge_and_publish(params, swapped, tmp_path)
    assert not third["passed"]
    assert aliases(params) == {"champion": "2", "previous": "1", "challenger": "3"}
    assert "vs_champion.accuracy" in tags(params, "3")["gate_reasons"]
    assert tags(params, "3")["gate_passed"] == "false"

    # 4. Rollback: @champion <- @previous.
    rolled = registry.rollback(params)
    assert rolled["version"] == "1" and rolled["demoted"] == "2"
    assert aliases(params)["champion"] == "1" and aliases(params)["previous"] is None
    assert "rolled_back_at" in tags(params, "2")
    with pytest.raises(LookupError, match="no @previous"):
        registry.rollback(params)

    # 5. Human override: the rejected v3 is promoted by hand, and that is recorded.
    manual = registry.promote(params, "3", reason="incident 7: need the old behaviour")
    assert aliases(params) == {"champion": "3", "previous": "1", "challenger": None}
    t = tags(params, "3")
    assert t["promotion"] == "manual" and t["promotion_reason"].startswith("incident 7")
    assert t["gate_passed"] == "false"  # the overridden verdict stays visible
    assert manual["moves"] == ["@previous -> v1", "@champion -> v3"]
    with pytest.raises(LookupError, match="no version 42"):
        registry.promote(params, "42")


def test_the_same_model_again_is_no_worse_and_takes_over(bundles, tmp_path,
                                                         tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    good = bundles["good"]
    judge_and_publish(params, good, tmp_path)
    # The same model again: exactly no difference against the champion.
    again = judge_and_publish(params, good, tmp_path)
    assert again["passed"] and aliases(params)["champion"] == "2"
    assert aliases(params)["previous"] == "1"


def test_download_verifies_sha256_and_holds_no_pickle(bundles, tmp_path, tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    judge_and_publish(params, bundles["good"], tmp_path)

    version, local = registry.download_bundle(params, "champion", tmp_path / "served")
    assert version == "1"
    assert sorted(p.name for p in local.iterdir()) == sorted([*served_files(local),
                                                              REFERENCE_FILE])
    for path in local.iterdir():
        assert path.suffix in (".onnx", ".json")  # protobuf and JSON only, no pickle
    assert len(OnnxClassifier(local).predict(["football goal referee"])) == 1

    # Corrupt the stored artifact: the download must refuse it and leave `dst` as it was.
    source = tmp_path / "mlartifacts"
    stored = next(source.rglob(f"bundle/{INT8_MODEL}"))
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BundleIntegrityError, match="sha256"):
        registry.download_bundle(params, "1", tmp_path / "served")
    assert OnnxClassifier(local).sha256 == tags(params, "1")["sha256"]
    with pytest.raises(LookupError, match="no @previous alias"):
        registry.download_bundle(params, "previous", tmp_path / "x")


def test_run_records_params_step_metrics_and_lineage(bundles, tmp_path, tiny_backbone_dir):
    from components.data.files import data_version
    from components.train.finetune import train

    params = tiny_test_params(tmp_path, tiny_backbone_dir, ["finetune.max_steps=6",
                                                           "finetune.eval_every=3"])
    prepared = bundles["good"]["prepared"]
    run_id = tracking.start_run(params, prepared)
    train(params, prepared, tmp_path / "model", logger=tracking.MlflowLogger(params, run_id))
    tracking.end_run(params, run_id)

    client = tracking.get_client(params)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data_version"] == data_version(prepared)
    assert run.data.tags["params_hash"] == params.hash()
    assert run.data.tags["strategy"] == "adamw" and run.data.tags["peft_method"] == "none"
    assert len(run.data.tags["git_commit"]) >= 7
    assert run.data.params["finetune.max_steps"] == "6"
    history = client.get_metric_history(run_id, "train/loss")
    assert len(history) >= 2 and len({m.step for m in history}) == len(history)
    assert [a.path for a in client.list_artifacts(run_id, "config")] == ["config/params.yaml"]


def test_registry_and_tracking_import_without_torch():
    import subprocess

    code = ("import sys, components.registry.versions, components.registry.tracking; "
            "print('torch' in sys.modules or 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_cli_models_promote_and_errors(bundles, tmp_path, tiny_backbone_dir):
    from pipelines.cli import app

    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    sets = [arg for o in tiny_overrides(tmp_path, tiny_backbone_dir) for arg in ("--set", o)]
    runner = CliRunner()
    empty = runner.invoke(app, ["models", *sets])
    assert empty.exit_code == 0 and "no versions" in empty.output
    judge_and_publish(params, bundles["good"], tmp_path)
    listing = runner.invoke(app, ["models", *sets])
    assert listing.exit_code == 0 and "@champion" in listing.output and "passed" in listing.output
    missing = runner.invoke(app, ["promote", "9", *sets])
    assert missing.exit_code != 0 and "no version 9" in missing.output
    no_previous = runner.invoke(app, ["rollback", *sets])
    assert no_previous.exit_code != 0 and "no @previous" in no_previous.output


def test_credentials_in_a_uri_never_reach_mlflow(tmp_path, tiny_backbone_dir, monkeypatch):
    """A tracking URI with user:password (or any URI param) is logged with `***` instead."""
    import mlflow

    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # the store in use; params name another
    secret = "https://alice:s3cret@mlflow.example.com"
    params = tiny_test_params(tmp_path, tiny_backbone_dir, [
        f"registry.tracking_uri={secret}", "sweep.dask_address=tcp://bob:hunter2@dask:8786"])
    run_id = tracking.start_run(params)
    logged = tracking.get_client(params).get_run(run_id).data.params
    assert logged["registry.tracking_uri"] == "https://***@mlflow.example.com"
    assert logged["sweep.dask_address"] == "tcp://***@dask:8786"
    config = Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="config/params.yaml", dst_path=str(tmp_path / "dl"),
        tracking_uri=store)).read_text()
    assert "s3cret" not in config and "hunter2" not in config and "***@" in config
    assert tracking.redact({"a": [secret], "b": "sqlite:///x.db"}) == {
        "a": ["https://***@mlflow.example.com"], "b": "sqlite:///x.db"}
