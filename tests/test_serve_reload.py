"""Hot reload against a real MLflow SQLite registry: the server follows @champion."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from components.config import load_params
from components.release.predictor import OnnxClassifier
from deploy.serve import create_app
from tests.conftest import TINY_LABELS
from tests.serve_support import export_tiny_bundle, running_server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEXTS = ["the team scored a late goal", "heavy rain and wind tonight",
         "stock prices fell after the bank report", "interest rates and loans"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tokenizer_dir) -> list[Path]:
    root = tmp_path_factory.mktemp("reload")
    return [export_tiny_bundle(root / f"b{seed}", tokenizer_dir, TINY_LABELS, seed=seed)
            for seed in (1, 2)]


def register(params, bundle: Path, passed: bool) -> str:
    from components.registry.tracking import start_run
    from components.registry.versions import publish

    run_id = start_run(params, None, run_name=bundle.name)
    verdict = {"passed": passed, "reasons": [] if passed else ["held back for the test"]}
    return publish(params, run_id, bundle, verdict)["version"]


def tamper_registered_int8(params, version: str) -> None:
    """Flip bytes of a version's stored model.int8.onnx, as a corrupted store would."""
    from urllib.parse import unquote, urlparse

    from components.registry.tracking import get_client

    mv = get_client(params).get_model_version(params.registry.model_name, version)
    # the version's own LoggedModel folder (its `source`): no other version shares it
    stored = list(Path(unquote(urlparse(mv.source).path)).rglob("model.int8.onnx"))
    assert len(stored) == 1, stored
    data = bytearray(stored[0].read_bytes())
    data[-16:] = bytes(16)
    stored[0].write_bytes(bytes(data))


class Hammer:
    """Clients that keep predicting until stopped, recording status and model version."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url, self.results, self.stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                r = client.post(self.url + "/v1/predict", json={"texts": TEXTS[:2]})
                version = r.json().get("model_version") if r.status_code == 200 else None
                self.results.append((r.status_code, version))

    def __enter__(self) -> Hammer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def predict(url: str) -> dict:
    resp = httpx.post(url + "/v1/predict", json={"texts": TEXTS})
    assert resp.status_code == 200, resp.text
    return resp.json()


def cli_predict(tmp_path: Path) -> dict:
    from typer.testing import CliRunner

    from pipelines.cli import app as cli

    result = CliRunner().invoke(cli, [
        "predict", "--set", f"registry.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "--set", f"registry.artifact_root={tmp_path}/mlartifacts", TEXTS[0]])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def served_version(url: str) -> str:
    return httpx.get(url + "/readyz").json()["model_version"]


def test_server_follows_champion_and_survives_a_bad_version(tmp_path, bundles):
    from components.registry.versions import promote

    params = load_params(overrides=[
        f"registry.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"registry.artifact_root={tmp_path}/mlartifacts", "serve.reload_interval_s=0.3",
        "serve.threads=1", "serve.max_batch=8"])
    assert register(params, bundles[0], passed=True) == "1"    # @champion
    assert register(params, bundles[1], passed=False) == "2"   # @challenger only
    app = create_app(params, cache_dir=tmp_path / "cache", api_token="")
    with running_server(app) as url:
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200)
        first = predict(url)
        assert first["model_version"] == "1"
        expected = OnnxClassifier(bundles[0]).predict(TEXTS)
        assert [p["label"] for p in first["predictions"]] == [e.label for e in expected]
        assert cli_predict(tmp_path)["model_version"] == "1"  # `tuneline predict` from @champion

        with Hammer(url) as hammer:
            wait_for(lambda: len(hammer.results) > 5)
            promote(params, "2", reason="reload test")
            wait_for(lambda: served_version(url) == "2")
            wait_for(lambda: any(v == "2" for _, v in hammer.results[-3:]))
        statuses = {s for s, _ in hammer.results}
        assert statuses == {200}, "requests failed during the swap"
        versions = [v for _, v in hammer.results]
        assert set(versions) == {"1", "2"}
        second = predict(url)
        assert second["model_version"] == "2"
        new = OnnxClassifier(bundles[1]).predict(TEXTS)
        for got, want in zip(second["predictions"], new, strict=True):
            assert got["label"] == want.label
            assert got["score"] == pytest.approx(want.score, abs=1e-5)

        # A version whose stored int8 file no longer matches its sha256 must not be served.
        assert register(params, bundles[0], passed=False) == "3"
        tamper_registered_int8(params, "3")
        promote(params, "3", reason="corrupted on purpose")
        ready = wait_for(lambda: (r := httpx.get(url + "/readyz").json())
                         ["failed_version"] == "3" and r)
        assert ready["ready"] is True and ready["model_version"] == "2"
        assert "sha256" in ready["last_reload_error"]
        assert predict(url)["model_version"] == "2"
        metrics = httpx.get(url + "/metrics").text
        assert "tuneline_model_reload_failing 1.0" in metrics
        assert 'tuneline_model_reloads_total{result="failure"}' in metrics
        assert 'tuneline_model_info{sha256="' in metrics and 'version="2"' in metrics
