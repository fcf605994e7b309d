"""Drift through the real server: a registered version's reference, live PSI moving."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from components.evaluate.drift import REFERENCE_FILE
from components.registry.tracking import start_run
from components.registry.versions import list_versions, publish
from deploy.serve import create_app
from tests.conftest import tiny_rows
from tests.model_support import tiny_test_params, trained_bundle
from tests.serve_support import running_server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_backbone_dir):
    return trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")


def samples(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items): value} of the server's /metrics."""
    text = httpx.get(url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def label_psi(url: str, version: str) -> float | None:
    return samples(url).get(("tuneline_prediction_psi", (("kind", "label"),
                                                         ("version", version))))


def send(url: str, texts: list[str], per_request: int = 6) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(0, len(texts), per_request):
            resp = client.post(url + "/v1/predict", json={"texts": texts[i: i + per_request]})
            assert resp.status_code == 200, resp.text


def test_skewed_traffic_moves_the_drift_metric(tmp_path, good, tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir, [
        "monitoring.psi_window=60", "monitoring.psi_min_predictions=30",
        "serve.reload_interval_s=0.3", "serve.threads=1"])
    run_id = start_run(params, good["prepared"])
    version = publish(params, run_id, good["bundle"], {"passed": True, "reasons": []},
                      prepared_dir=good["prepared"])["version"]
    tags = next(r["tags"] for r in list_versions(params) if r["version"] == version)
    assert tags["prediction_reference"] == REFERENCE_FILE

    traffic = tiny_rows(n_per_class=20, seed=3)  # same source as the training data
    balanced = [r["text"] for r in traffic]
    skewed = [r["text"] for r in traffic if r["label"] == "sports"] * 3
    threshold = params.monitoring.alerts.max_psi

    app = create_app(params, cache_dir=tmp_path / "cache", api_token="")
    with running_server(app) as url:
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200)
        send(url, balanced[:24])
        before = samples(url)
        assert label_psi(url, version) is None  # 24 < psi_min_predictions: not exported yet
        assert before[("tuneline_prediction_reference_loaded", (("version", version),))] == 1
        assert before[("tuneline_prediction_psi_window", (("version", version),))] == 24

        send(url, balanced[24:])
        calm = label_psi(url, version)
        assert calm is not None and calm < threshold, calm

        send(url, skewed)  # the window (60) now holds sports predictions only
        drifted = label_psi(url, version)
        after = samples(url)

    assert drifted > threshold > calm, (calm, drifted)
    sports = after[("tuneline_predictions_total", (("label", "sports"), ("version", version)))]
    assert sports >= len(skewed)
    count = after[("tuneline_prediction_confidence_count", (("version", version),))]
    assert count == len(balanced) + len(skewed)
    assert ("tuneline_prediction_psi", (("kind", "confidence"), ("version", version))) in after
    assert after[("tuneline_model_created_timestamp_seconds", ())] > 0
