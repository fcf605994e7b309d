"""Evaluation metrics against scikit-learn, calibration error, and the report folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from components.evaluate.report import (
    compute_report,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
)
from components.evaluate.scoring import evaluate_model
from tests.model_support import tiny_test_params, trained_bundle


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    k, n = 4, 200
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.integers(0, 2, n)[:, None]
    pred = logits.argmax(1)
    report = compute_report(y, logits, ["a", "b", "c", "d"], ece_bins=10)

    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred,
                                                                         zero_division=0)
    for i, name in enumerate("abcd"):
        assert report["per_class"][name]["precision"] == pytest.approx(precision[i])
        assert report["per_class"][name]["recall"] == pytest.approx(recall[i])
        assert report["per_class"][name]["f1"] == pytest.approx(f1[i])
        assert report["per_class"][name]["support"] == support[i]


def test_macro_f1_ignores_classes_absent_from_both_sides():
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    expected = skm.f1_score(y, pred, average="macro", labels=[0, 1])
    assert macro_f1(y, pred, num_labels=5) == pytest.approx(expected)
    assert confusion_matrix(y, pred, 3).sum() == 4


def test_expected_calibration_error():
    onehot = np.eye(3)[[0, 1, 2, 0]]
    # Fully confident and always right: perfectly calibrated.
    assert expected_calibration_error(onehot, np.array([0, 1, 2, 0]), 15) == pytest.approx(0)
    # Fully confident, half right: |0.5 - 1.0| in the single occupied bin.
    assert expected_calibration_error(onehot, np.array([0, 1, 0, 1]), 15) == pytest.approx(0.5)
    # Against a direct per-bin loop on random probabilities.
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=300)
    y = rng.integers(0, 3, 300)
    conf, correct = probs.max(1), probs.argmax(1) == y
    bins = np.minimum((conf * 10).astype(int), 9)
    direct = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
                 for b in range(10) if (bins == b).any())
    assert expected_calibration_error(probs, y, 10) == pytest.approx(direct)


def test_compute_report_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        compute_report([0, 1], np.zeros((2, 3)), ["a", "b"], 10)


def test_evaluate_model_writes_report_folder(tmp_path_factory, tiny_backbone_dir, tmp_path):
    trained = trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    out = tmp_path / "eval"

    metrics = evaluate_model(trained["model"], trained["prepared"], out, params)

    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == metrics["accuracy"] >= 0.9  # a trained model, not chance
    assert report["n"] == metrics["n"] == 12
    assert sum(map(sum, report["confusion_matrix"])) == 12
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    for label in report["labels"]:
        assert f"| {label} |" in markdown


def test_evaluate_model_rejects_label_mismatch(tmp_path_factory, tiny_backbone_dir, tmp_path):
    trained = trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")
    prepared = tmp_path / "other"
    prepared.mkdir()
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        (prepared / name).write_bytes((trained["prepared"] / name).read_bytes())
    (prepared / "labels.json").write_text(json.dumps({"labels": ["finance", "sports",
                                                                 "weather"]}))
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    with pytest.raises(ValueError, match="differ from the prepared label map"):
        evaluate_model(trained["model"], prepared, tmp_path / "eval", params)
    assert not (tmp_path / "eval").exists()
