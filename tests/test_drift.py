"""Prediction distributions, PSI, and the server's live monitor (no server needed here)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from components.config import load_params
from components.evaluate.drift import (
    check_reference,
    confidence_bins,
    load_reference,
    prediction_distribution,
    psi,
)
from deploy.serve.monitor import PredictionMonitor

LABELS = ["a", "b", "c"]
EDGES = [0.0, 0.5, 0.9, 1.0]


def logits_for(label_ids: list[int], margin: float = 5.0) -> np.ndarray:
    out = np.zeros((len(label_ids), len(LABELS)))
    out[np.arange(len(label_ids)), label_ids] = margin
    return out


def test_distribution_counts_predicted_labels_and_confidence_bins():
    logits = np.concatenate([logits_for([0, 0, 1, 2]), [[0.0, 0.1, 0.0]]])  # last: near-tie
    dist = prediction_distribution(logits, LABELS, EDGES)
    assert dist["rows"] == 5
    assert dist["labels"] == {"names": LABELS, "fractions": [0.4, 0.4, 0.2]}
    # margin 5 over 3 classes: p = e^5 / (e^5 + 2) = 0.987 -> bin (0.9, 1]; the tie -> (0, 0.5]
    assert dist["confidence"]["fractions"] == [0.2, 0.0, 0.8]
    assert check_reference(json.loads(json.dumps(dist)), LABELS) == dist


def test_confidence_bins_match_prometheus_le_buckets():
    edges = np.asarray(EDGES)
    assert confidence_bins(np.array([0.0, 0.3, 0.5, 0.51, 0.9, 0.95, 1.0]), edges).tolist() \
        == [0, 0, 0, 1, 1, 2, 2]


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift():
    ref = [0.5, 0.3, 0.2]
    assert psi(np.array([50, 30, 20]), ref, 1e-4) == pytest.approx(0.0, abs=1e-12)
    small = psi(np.array([45, 33, 22]), ref, 1e-4)
    large = psi(np.array([10, 10, 80]), ref, 1e-4)
    assert 0 < small < 0.1 < 0.25 < large
    # by hand: sum (a - e) ln(a / e)
    a = np.array([0.1, 0.1, 0.8])
    assert large == pytest.approx(float(np.sum((a - ref) * np.log(a / ref))))
    # an empty bin on either side stays finite thanks to the floor
    assert math.isfinite(psi(np.array([0, 50, 50]), ref, 1e-4))
    assert math.isfinite(psi(np.array([40, 30, 30]), [0.0, 0.5, 0.5], 1e-4))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: psi(np.array([1, 2]), [0.5, 0.3, 0.2], 1e-4), "same bins"),
    (lambda: psi(np.array([0, 0, 0]), [0.5, 0.3, 0.2], 1e-4), "at least one observation"),
    (lambda: prediction_distribution(np.zeros((0, 3)), LABELS, EDGES), "at least one row"),
    (lambda: prediction_distribution(np.zeros((2, 2)), LABELS, EDGES), "2 classes, labels 3"),
    (lambda: prediction_distribution(np.zeros((2, 3)), LABELS, [0.1, 1.0]), "from 0.0 to 1.0"),
    (lambda: prediction_distribution(np.zeros((2, 3)), LABELS, [0.0, 0.7, 0.5, 1.0]),
     "increase"),
])
def test_bad_input_is_rejected_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_reference_validation(tmp_path):
    good = prediction_distribution(logits_for([0, 1, 2]), LABELS, EDGES)
    with pytest.raises(ValueError, match="differ from the model's"):
        check_reference(good, ["x", "y", "z"])
    broken = json.loads(json.dumps(good))
    broken["labels"]["fractions"] = [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="do not sum to 1"):
        check_reference(broken)
    with pytest.raises(ValueError, match="missing"):
        check_reference({"format": 1, "labels": {}})
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(good))
    assert load_reference(path, LABELS)["rows"] == 3


def test_bad_monitoring_params_name_the_key():
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="monitoring"):
        load_params(overrides=["monitoring.confidence_bins=[0.0, 0.5]"])
    with pytest.raises(ConfigError, match="psi_min_predictions must be <= psi_window"):
        load_params(overrides=["monitoring.psi_window=10", "monitoring.psi_min_predictions=20"])


def probs_for(label_ids: list[int]) -> np.ndarray:
    z = logits_for(label_ids)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def scrape(monitor: PredictionMonitor) -> str:
    registry = CollectorRegistry()
    registry.register(monitor)
    return generate_latest(registry).decode()


def test_monitor_window_psi_moves_with_skewed_traffic_and_resets_per_version():
    cfg = load_params(overrides=["monitoring.psi_window=100", "monitoring.psi_min_predictions=50",
                                 f"monitoring.confidence_bins={EDGES}"]).monitoring
    reference = prediction_distribution(logits_for([0, 1, 2] * 10), LABELS, EDGES)
    monitor = PredictionMonitor(cfg)
    monitor.set_version("1", LABELS, reference)
    monitor.observe("1", probs_for([0, 1, 2] * 10))
    assert monitor.psi("1") is None  # 30 < psi_min_predictions
    assert "tuneline_prediction_psi{" not in scrape(monitor)
    monitor.observe("1", probs_for([0, 1, 2] * 10))
    balanced = monitor.psi("1")
    assert balanced["label"] == pytest.approx(0.0, abs=1e-9)
    monitor.observe("1", probs_for([0] * 100))  # the window now holds only class "a"
    skewed = monitor.psi("1")
    assert skewed["label"] > 1.0
    text = scrape(monitor)
    assert 'tuneline_predictions_total{label="a",version="1"} 120.0' in text
    assert 'tuneline_prediction_confidence_bucket{le="1.0",version="1"} 160.0' in text
    assert 'tuneline_prediction_psi{kind="label",version="1"}' in text
    assert 'tuneline_prediction_psi_window{version="1"} 100.0' in text
    assert 'tuneline_prediction_reference_loaded{version="1"} 1.0' in text
    assert 'tuneline_prediction_reference_share{bin="a",kind="label",version="1"}' in text

    monitor.set_version("2", LABELS, None)  # a new version without a reference
    monitor.observe("2", probs_for([1] * 60))
    assert monitor.psi("2") is None
    text = scrape(monitor)
    assert 'tuneline_prediction_reference_loaded{version="2"} 0.0' in text
    assert 'tuneline_predictions_total{label="b",version="2"} 60.0' in text
    assert 'tuneline_predictions_total{label="a",version="1"} 120.0' in text  # kept
    assert "tuneline_prediction_psi{" not in text  # only the served version has a PSI
