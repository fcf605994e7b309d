"""The release path under faults: every version owns its files, a registration stopped at
any point is finished by the next run, an interrupted rollback by the next rollback.

MLflow is real (a SQLite store in a temp folder); the faults are injected by a client
wrapper whose chosen method fails on its n-th call, as an outage at that point would.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from mlflow.exceptions import MlflowException

from components import stages
from components.config import load_params
from components.io import sha256_file
from components.registry import versions as registry
from components.release.predictor import INT8_MODEL
from tests.conftest import tiny_overrides, tiny_rows
from tests.model_support import tiny_test_params, trained_bundle
from tests.project_support import BIN, clone_project, env, run, run_summary, write_tiny_params
from tests.serve_support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Outage:
    """An MlflowClient whose `method` raises on its `nth` call; everything else passes."""

    def __init__(self, inner, method: str, nth: int = 1) -> None:
        self.inner, self.method, self.nth, self.calls = inner, method, nth, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        def failing(*args, **kwargs):
            self.calls += 1
            if self.calls == self.nth:
                raise MlflowException(f"injected outage at {name} call {self.nth}",
                                      error_code="TEMPORARILY_UNAVAILABLE")
            return attr(*args, **kwargs)
        return failing


def inject(monkeypatch, method: str, nth: int = 1) -> None:
    real = registry.get_client
    monkeypatch.setattr(registry, "get_client", lambda params: Outage(real(params), method, nth))


def aliases(params) -> dict[str, str]:
    client = registry.get_client(params)
    return {a: str(v) for a, v in
            client.get_registered_model(params.registry.model_name).aliases.items()}


def versions_of(params, release: str) -> list[dict]:
    return [r for r in registry.list_versions(params)
            if r["tags"].get("release_fingerprint") == release]


def assert_files_match_tags(params, tmp: Path) -> None:
    """Every version downloads to exactly the int8 file its own `sha256` tag names."""
    for row in registry.list_versions(params):
        version, folder = registry.download_bundle(params, row["version"],
                                                   tmp / f"dl-v{row['version']}")
        assert sha256_file(folder / INT8_MODEL) == row["tags"]["sha256"], version


# ---------------------------------------------------------------------------- immutability


def test_two_releases_of_one_run_keep_their_own_files(tmp_path, tiny_backbone_dir,
                                                      tmp_path_factory, monkeypatch):
    """The same training run released twice (another export): v1's files, verdict and
    pyfunc stay v1's."""
    import mlflow

    from components.registry import tracking

    good = trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")
    swapped = trained_bundle(tmp_path_factory, tiny_backbone_dir, "swapped")
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    run_id = tracking.start_run(params, good["prepared"])
    reports = {}
    for kind, bundle in (("good", good), ("swapped", swapped)):
        folder = tmp_path / f"gate-{kind}"
        folder.mkdir()
        (folder / "verdict.json").write_text(json.dumps({"kind": kind}))
        reports[kind] = registry.publish(
            params, run_id, bundle["bundle"], {"passed": kind == "good", "reasons": ["x"]},
            tags={"release_fingerprint": f"release-{kind}"}, prepared_dir=bundle["prepared"],
            reports={"gate": folder})
    v1, v2 = reports["good"]["version"], reports["swapped"]["version"]
    assert (v1, v2) == ("1", "2") and reports["good"]["sha256"] != reports["swapped"]["sha256"]
    assert_files_match_tags(params, tmp_path)

    client = registry.get_client(params)
    sources = {v: client.get_model_version(params.registry.model_name, v).source
               for v in (v1, v2)}
    assert sources[v1] != sources[v2]  # one LoggedModel each
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(params))
    for version, kind in ((v1, "good"), (v2, "swapped")):
        local = Path(mlflow.artifacts.download_artifacts(
            f"{sources[version]}/reports/gate/verdict.json", dst_path=str(tmp_path / version)))
        assert json.loads(local.read_text()) == {"kind": kind}
        model = mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}/{version}")
        assert model.unwrap_python_model().clf.sha256 == reports[kind]["sha256"]
    assert aliases(params) == {"champion": v1, "challenger": v2}


# ---------------------------------------------------------------------------- repair


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_backbone_dir):
    """A tiny project whose chain has run once: every stage current, v1 the @champion."""
    root = tmp_path_factory.mktemp("release-project")
    (root / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(30)))
    overrides = tiny_overrides(root, tiny_backbone_dir) + [
        "model.num_threads=1", "finetune.max_steps=20", "export.latency_repeats=3",
        "gate.min_metrics={accuracy: 0.0, macro_f1: 0.0}", "gate.int8_confident_probability=1.0",
        "gate.int8_max_accuracy_drop=1.0", "gate.max_logit_diff=1.0",
        "gate.max_drop_vs_champion={accuracy: 1.0, macro_f1: 1.0}"]
    params = load_params(overrides=overrides)
    for stage in ("ingest", "prepare", "version_data", "pretrain", "finetune", "compress",
                  "evaluate", "export", "gate", "register"):
        getattr(stages, stage)(params)
    assert aliases(params)["champion"] == "1"
    return {"root": root, "overrides": overrides, "counter": [0]}


def new_release(project, *extra: str):
    """Params of a new release of the same model (another latency budget, a new identity),
    judged by the gate: what `register` needs."""
    project["counter"][0] += 1
    params = load_params(overrides=project["overrides"] + [
        f"gate.max_latency_p95_ms={5000 + project['counter'][0]}", *extra])
    stages.gate(params)
    return params


# Every MLflow write of a passing registration, in order: the LoggedModel (create, upload,
# finalize), the version, @previous, @champion, the run's tags, the completion mark.
POINTS = [("create_logged_model", 1), ("log_model_artifacts", 1),
          ("finalize_logged_model", 1), ("create_model_version", 1),
          ("set_registered_model_alias", 1), ("set_registered_model_alias", 2),
          ("log_batch", 1), ("set_model_version_tag", 1)]


@pytest.mark.parametrize(("method", "nth"), POINTS)
def test_a_registration_stopped_at_any_point_is_finished_by_the_next_run(
        project, method, nth, monkeypatch, tmp_path):
    params = new_release(project)
    release = stages.release_fingerprint(params)
    before = aliases(params)
    inject(monkeypatch, method, nth)
    with pytest.raises(MlflowException, match="injected outage"):
        stages.register(params)
    monkeypatch.undo()
    half_done = versions_of(params, release)
    assert len(half_done) <= 1
    assert aliases(params).get("champion") in (before["champion"], *[
        r["version"] for r in half_done])

    again = stages.register(params)                     # the next run
    [version] = versions_of(params, release)            # one version, never a duplicate
    assert again["version"] == version["version"]
    assert again["repaired"] == bool(half_done) and not again["unchanged"]
    assert registry.is_complete(version["tags"])
    now = aliases(params)
    assert (now["champion"], now["previous"]) == (version["version"], before["champion"])
    assert stages.register(params)["unchanged"]         # and then it is done
    assert_files_match_tags(params, tmp_path)


def test_a_rejected_registration_stopped_before_its_alias_is_finished(project, monkeypatch):
    params = new_release(project, "gate.max_size_mb=0.0001")
    champion = aliases(params)["champion"]
    inject(monkeypatch, "set_registered_model_alias", 1)
    with pytest.raises(MlflowException):
        stages.register(params)
    monkeypatch.undo()
    again = stages.register(params)
    assert again["repaired"] and not again["passed"]
    assert aliases(params)["challenger"] == again["version"]
    assert aliases(params)["champion"] == champion


def test_a_promotion_made_by_hand_meanwhile_is_not_undone(project, monkeypatch):
    params = new_release(project)
    release = stages.release_fingerprint(params)
    inject(monkeypatch, "set_registered_model_alias", 1)
    with pytest.raises(MlflowException):
        stages.register(params)
    monkeypatch.undo()
    [pending] = versions_of(params, release)
    registry.promote(params, "1", reason="someone decided")  # before the next run
    again = stages.register(params)
    assert again["repaired"] and "left there" in again["note"]
    assert aliases(params)["champion"] == "1"
    assert registry.is_complete(versions_of(params, release)[0]["tags"])
    assert pending["version"] != "1"


def test_an_interrupted_rollback_is_finished_by_the_next(project, monkeypatch):
    params = new_release(project)
    stages.register(params)
    champion, previous = aliases(params)["champion"], aliases(params)["previous"]
    inject(monkeypatch, "delete_registered_model_alias", 1)  # after @champion moved
    with pytest.raises(MlflowException):
        registry.rollback(params, reason="bad outputs")
    monkeypatch.undo()
    assert aliases(params)["champion"] == aliases(params)["previous"] == previous
    done = registry.rollback(params, reason="bad outputs")
    assert done["version"] == previous and aliases(params)["champion"] == previous
    assert "previous" not in aliases(params)
    rolled = next(r for r in registry.list_versions(params) if r["version"] == champion)
    assert rolled["tags"]["rollback_reason"] == "bad outputs"


# ---------------------------------------------------------------------------- the CLI


def test_release_again_with_another_export_serve_reject_and_repair(tmp_path, tiny_backbone_dir,
                                                                   monkeypatch):
    """A new user's path: run, release the same model with another export (rejected), then
    everything still loads, serves and reruns; rejections exit 4 on every verb."""
    repo = clone_project(tmp_path / "repo")
    write_tiny_params(repo, tiny_backbone_dir)
    other = ["--set", "export.per_channel=false", "--set", "gate.max_size_mb=0.001"]

    first = run_summary(repo)
    assert (first["exit_code"], first["version"], first["status"]) == (0, "1", "promoted")
    second = run_summary(repo, *other)                 # same trained model, another export
    assert (second["exit_code"], second["version"]) == (4, "2")
    assert "finetune" in second["reused"] and second["run_id"] == first["run_id"]

    monkeypatch.chdir(repo)
    params = load_params(repo / "params.yaml")
    assert_files_match_tags(params, tmp_path)          # v1's files are still v1's
    tags = {r["version"]: r["tags"] for r in registry.list_versions(params)}
    assert tags["1"]["sha256"] != tags["2"]["sha256"]
    assert aliases(params) == {"champion": "1", "challenger": "2"}

    loaded = subprocess.run(
        [str(BIN / "python"), "-c", "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
         "m = mlflow.pyfunc.load_model('models:/tuneline-classifier@champion'); "
         "print(m.unwrap_python_model().clf.sha256)", params.registry.tracking_uri],
        cwd=repo, env=env(), capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split()[-1] == tags["1"]["sha256"]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(BIN / "tuneline"), "serve", "--port", str(port)], cwd=repo,
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def ready():
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
            except httpx.HTTPError:
                return None
            return body if body["ready"] else None
        body = wait_for(ready, timeout=120, interval=0.5)
        assert (body["model_version"], body["sha256"]) == ("1", tags["1"]["sha256"])
    finally:
        server.terminate()
        server.wait(30)

    third = run_summary(repo)                          # the next retrain is not blocked
    assert (third["exit_code"], third["status"], third["version"]) == (0, "unchanged", "1")
    for verb in ("gate", "register"):                  # every verb reports the rejection
        proc = run(repo, str(BIN / "tuneline"), verb, *other, ok=False)
        assert proc.returncode == 4 and "rejected" in proc.stderr, proc.stderr[-2000:]
    again = run_summary(repo, *other)
    assert (again["exit_code"], again["status"], again["version"]) == (4, "unchanged", "2")

    # v2's registration stopped before its alias move (what a crash there leaves).
    client = registry.get_client(params)
    client.set_model_version_tag("tuneline-classifier", "2", "registration", "pending")
    client.delete_registered_model_alias("tuneline-classifier", "challenger")
    repaired = run_summary(repo, *other)
    assert repaired["exit_code"] == 4 and repaired["repaired"]
    assert aliases(params) == {"champion": "1", "challenger": "2"}

    # gate.fail_run_on_reject: the run fails on purpose, in one line, still exit 4.
    failed = run(repo, str(BIN / "tuneline"), "run", "--set", "export.per_channel=false",
                 "--set", "gate.max_size_mb=0.002", "--set", "gate.fail_run_on_reject=true",
                 ok=False)
    assert failed.returncode == 4, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr and "rejected:" in failed.stderr
    assert aliases(params)["champion"] == "1"


def test_exit_codes_are_documented_in_help():
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.cli.app import EXIT_MEANINGS, ExitCode

    out = CliRunner().invoke(app, ["--help"]).output
    docs = (Path(__file__).parents[1] / "docs" / "guarantees.md").read_text()
    assert "Exit codes" in out
    for code in ExitCode:
        assert code in EXIT_MEANINGS and f"{code.value} " in out
        assert f"| {code.value} | {EXIT_MEANINGS[code]} |" in docs


# ---------------------------------------------------------------- what a version carries


def test_a_version_carries_its_card_datasets_and_model_metrics(project):
    """Read back through the MLflow client: the LoggedModel's metrics name the test split,
    the run's dataset inputs carry the DVC digests, the card travels with the version."""
    from components.data.files import data_version, md5_file

    params = load_params(overrides=project["overrides"])
    client = registry.get_client(params)
    mv = client.get_model_version(params.registry.model_name, "1")

    card = registry.model_card(params, "1")
    assert card.startswith(f"# Model card: {params.registry.model_name} v1\n")
    # MLflow's version page shows the description: the verdict, then the card.
    assert mv.description.startswith("gate passed\n\n")
    assert "## Intended use" in mv.description and "## Lineage" in mv.description
    for section in ("## Intended use", "## Data", "## Metrics on the test split", "## Gate",
                    "## Limitations", "## Lineage"):
        assert section in card
    assert data_version(params.paths.prepared) in card

    inputs = client.get_run(mv.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
                  for d in inputs}
    assert set(by_context) == {"train", "validation", "test"}
    test_set = by_context["test"]
    assert test_set.digest == md5_file(Path(params.paths.prepared) / "test.jsonl")
    assert json.loads(test_set.source)["data_version"] == data_version(params.paths.prepared)

    model = client.get_logged_model(mv.tags["model_id"])
    metrics = {m.key: m for m in model.metrics}
    assert {"test_accuracy", "test_macro_f1", "test_ece"} <= set(metrics)
    assert metrics["test_accuracy"].dataset_digest == test_set.digest
    report = json.loads((Path(params.paths.eval) / "report.json").read_text())
    assert metrics["test_accuracy"].value == pytest.approx(report["accuracy"])


def test_a_version_carries_its_evaluation_plots(project, tmp_path):
    """A release judged against a champion: its LoggedModel holds the confusion matrix, the
    reliability diagram, per-class F1 against the champion and the gate's bootstrap
    distributions, each a PNG that reads back through the MLflow client."""
    import mlflow
    from PIL import Image

    from components.registry.tracking import tracking_uri

    params = new_release(project)
    verdict = json.loads((Path(params.paths.gate) / "verdict.json").read_text())
    assert not verdict["first_model"] and verdict["champion_report"]["per_class"]
    version = stages.register(params).result["version"]
    client = registry.get_client(params)
    mv = client.get_model_version(params.registry.model_name, version)
    model_id = mv.tags["model_id"]
    listed = {f.path for folder in ("reports/eval", "reports/gate")
              for f in client.list_logged_model_artifacts(model_id, folder)}
    expected = {"reports/eval/confusion_matrix.png", "reports/eval/reliability.png",
                "reports/gate/per_class_f1.png", "reports/gate/bootstrap_accuracy.png",
                "reports/gate/bootstrap_macro_f1.png"}
    assert expected <= listed, listed
    for path in sorted(expected):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{mv.source}/{path}", dst_path=str(tmp_path / Path(path).stem),
            tracking_uri=tracking_uri(params))
        with Image.open(local) as image:
            assert image.format == "PNG" and min(image.size) >= 200, path
            image.verify()
    # The distribution drawn is the one the gate judged: same resamples, same interval.
    rule = next(r for r in verdict["rules"] if r["name"] == "vs_champion.accuracy")
    hist = rule["bootstrap"]
    assert sum(hist["counts"]) == params.gate.noise.resamples
    assert hist["edges"][0] <= rule["ci_low"] <= rule["ci_high"] <= hist["edges"][-1]
