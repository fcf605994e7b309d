"""The gate: noise-aware champion comparison, absolute and budget rules, real bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import binomtest

from components.config import ConfigError, GateConfig
from components.evaluate import macro_f1
from components.gate import (
    _batched_macro_f1,
    compare_to_champion,
    mcnemar_pvalue,
    run_gate,
)
from components.predictor import INT8_MODEL, BundleIntegrityError
from tests.model_support import tiny_test_params, trained_bundle


def _gate(**noise) -> GateConfig:
    return GateConfig(max_drop_vs_champion={"accuracy": 0.0, "macro_f1": 0.0},
                      noise={"resamples": 500, **noise})


def _flip(pred: np.ndarray, rows: int, k: int = 3) -> np.ndarray:
    """Make the first `rows` predictions wrong."""
    out = pred.copy()
    out[:rows] = (out[:rows] + 1) % k
    return out


@pytest.fixture(scope="module")
def truth():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, 300)


@pytest.mark.parametrize("method", ["bootstrap", "mcnemar"])
def test_clearly_better_and_clearly_worse(truth, method):
    good, bad = truth.copy(), _flip(truth, 120)
    better = compare_to_champion(truth, good, bad, 3, _gate(method=method))
    worse = compare_to_champion(truth, bad, good, 3, _gate(method=method))
    assert all(r["outcome"] == "better" and r["passed"] for r in better)
    assert all(r["outcome"] == "worse" and not r["passed"] for r in worse)
    assert worse[0]["value"] == pytest.approx(-0.4)


@pytest.mark.parametrize("method", ["bootstrap", "mcnemar"])
@pytest.mark.parametrize("within_noise", ["promote", "reject"])
def test_difference_within_noise_follows_params(truth, method, within_noise):
    champion = _flip(truth, 60)
    challenger = _flip(truth, 62)  # two rows worse out of 300: noise
    rules = compare_to_champion(truth, challenger, champion, 3,
                                _gate(method=method, within_noise=within_noise))
    assert rules[0]["value"] < 0
    assert all(r["outcome"] == "within_noise" for r in rules)
    assert all(r["passed"] == (within_noise == "promote") for r in rules)


def test_significant_drop_within_allowance_passes(truth):
    cfg = GateConfig(max_drop_vs_champion={"accuracy": 0.2}, noise={"resamples": 500})
    [rule] = compare_to_champion(truth, _flip(truth, 30), truth, 3, cfg)
    assert rule["outcome"] == "worse" and rule["passed"]  # -0.1 >= -0.2
    assert rule["ci_high"] < 0 and rule["threshold"] == -0.2


def test_mcnemar_matches_exact_binomial_test():
    a = np.array([True] * 10 + [False] * 3 + [True] * 20)
    b = np.array([False] * 10 + [True] * 3 + [True] * 20)
    assert mcnemar_pvalue(a, b) == pytest.approx(binomtest(3, 13, 0.5).pvalue)
    assert mcnemar_pvalue(a, a) == 1.0


def test_batched_macro_f1_matches_single(truth):
    rng = np.random.default_rng(1)
    preds = np.stack([_flip(truth, int(n)) for n in rng.integers(0, 300, 5)])
    ys = np.stack([truth] * 5)
    expected = [macro_f1(truth, p, 3) for p in preds]
    np.testing.assert_allclose(_batched_macro_f1(ys, preds, 3), expected)


def test_unknown_gated_metric_is_named(tmp_path, tiny_backbone_dir, tmp_path_factory):
    good = trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")
    params = tiny_test_params(tmp_path, tiny_backbone_dir, ["gate.min_metrics.recall=0.5"])
    with pytest.raises(ValueError, match="gate.min_metrics.recall: unknown metric"):
        run_gate(good["bundle"], good["prepared"], params)
    with pytest.raises(ConfigError, match="gate.noise.method"):
        tiny_test_params(tmp_path, tiny_backbone_dir, ["gate.noise.method=ttest"])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_backbone_dir):
    return {kind: trained_bundle(tmp_path_factory, tiny_backbone_dir, kind)
            for kind in ("good", "swapped")}


def test_first_model_is_judged_on_absolute_rules_only(bundles, tmp_path, tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    good = bundles["good"]
    verdict = run_gate(good["bundle"], good["prepared"], params, out_dir=tmp_path / "gate")
    assert verdict["passed"] and verdict["first_model"] and verdict["reasons"] == []
    names = [r["name"] for r in verdict["rules"]]
    assert names == ["min.accuracy", "min.macro_f1", "int8_agreement", "int8_accuracy_drop",
                     "max_logit_diff", "latency_p95_ms", "size_mb"]
    saved = json.loads((tmp_path / "gate" / "verdict.json").read_text())
    assert saved["passed"] and saved["metrics"]["accuracy"] >= 0.9
    assert "PASSED" in (tmp_path / "gate" / "verdict.md").read_text()


def test_champion_is_rescored_on_the_same_split(bundles, tmp_path, tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir, ["gate.min_metrics.accuracy=0.0",
                                                           "gate.min_metrics.macro_f1=0.0"])
    good, swapped = bundles["good"], bundles["swapped"]
    better = run_gate(good["bundle"], good["prepared"], params, swapped["bundle"])
    worse = run_gate(swapped["bundle"], good["prepared"], params, good["bundle"])

    assert better["passed"]
    assert better["champion_metrics"]["accuracy"] == worse["metrics"]["accuracy"]
    rule = next(r for r in better["rules"] if r["name"] == "vs_champion.accuracy")
    assert rule["outcome"] == "better" and rule["ci_low"] > 0
    assert not worse["passed"]
    assert any(r.startswith("vs_champion.accuracy") and "worse" in r for r in worse["reasons"])


def test_budget_failure_names_the_rule(bundles, tmp_path, tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir, ["gate.max_size_mb=0.01"])
    good = bundles["good"]
    verdict = run_gate(good["bundle"], good["prepared"], params)
    assert not verdict["passed"]
    assert len(verdict["reasons"]) == 1 and verdict["reasons"][0].startswith("size_mb = ")


def test_tampered_bundle_is_refused(bundles, tmp_path, tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["good"]["bundle"], copy)
    (copy / INT8_MODEL).write_bytes((copy / INT8_MODEL).read_bytes()[:-10])
    with pytest.raises(BundleIntegrityError):
        run_gate(copy, bundles["good"]["prepared"], params)


def test_changed_label_set_needs_a_human(bundles, tmp_path, tiny_backbone_dir):
    from components.export import write_manifest

    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    champion = tmp_path / "champion"
    shutil.copytree(bundles["good"]["bundle"], champion)
    (champion / "labels.json").write_text(json.dumps({"labels": ["a", "b", "c"]}))
    write_manifest(champion)
    verdict = run_gate(bundles["good"]["bundle"], bundles["good"]["prepared"], params, champion)
    assert not verdict["passed"]
    assert verdict["reasons"] == ["same_labels_as_champion = 0 < 1 "
                                  "(label set changed: promote by hand if intended)"]
