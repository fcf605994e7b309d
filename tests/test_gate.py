"""The gate: noise-aware champion comparison, absolute and budget rules, real bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import binomtest

from components.config import ConfigError, GateConfig
from components.evaluate.report import macro_f1
from components.evaluate.stats import _batched_macro_f1, mcnemar_pvalue
from components.release.gate import (
    compare_to_champion,
    describe_failure,
    int8_rules,
    render_verdict,
    rows_needed,
    run_gate,
)
from components.release.predictor import INT8_MODEL, BundleIntegrityError
from tests.model_support import tiny_test_params, trained_bundle


def _gate(max_drop: float = 0.0, **cfg) -> GateConfig:
    noise = {"resamples": 500, **cfg.pop("noise", {})}
    return GateConfig(max_drop_vs_champion={"accuracy": max_drop, "macro_f1": max_drop},
                      noise=noise, **cfg)


def _flip(pred: np.ndarray, rows: int, k: int = 3) -> np.ndarray:
    """Make the first `rows` predictions wrong."""
    out = pred.copy()
    out[:rows] = (out[:rows] + 1) % k
    return out


def _shift(pred: np.ndarray, wrong: slice, k: int = 3) -> np.ndarray:
    """Make the predictions in `wrong` wrong."""
    out = pred.copy()
    out[wrong] = (out[wrong] + 1) % k
    return out


@pytest.fixture(scope="module")
def truth():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, 300)


@pytest.mark.parametrize("method", ["bootstrap", "mcnemar"])
def test_clearly_better_and_clearly_worse(truth, method):
    good, bad = truth.copy(), _flip(truth, 120)
    better = compare_to_champion(truth, good, bad, 3, _gate(noise={"method": method}))
    worse = compare_to_champion(truth, bad, good, 3, _gate(noise={"method": method}))
    assert all(r["outcome"] == "better" and r["passed"] for r in better)
    assert all(not r["passed"] for r in worse)
    assert worse[0]["value"] == pytest.approx(-0.4)
    assert worse[0]["ci_high"] < 0 and worse[0]["n"] == 300


@pytest.mark.parametrize("method", ["bootstrap", "mcnemar"])
def test_a_worse_model_within_noise_is_rejected(truth, method):
    # 186 rows, the challenger 6 rows (3.2 pt) worse: not significant, but measured worse.
    y = truth[:186]
    champion = _flip(y, 40)
    challenger = _shift(champion, slice(100, 116))      # 16 rows lost ...
    challenger[:10] = y[:10]                            # ... 10 won: net 6 rows worse
    rules = compare_to_champion(y, challenger, champion, 3, _gate(noise={"method": method}))
    rule = rules[0]
    assert rule["value"] == pytest.approx(-6 / 186)
    assert rule["ci_low"] < 0 < rule["ci_high"]                          # within noise ...
    assert method == "bootstrap" or rule["p_value"] > 0.05
    assert not rule["passed"] and rule["outcome"] == "drop beyond the allowed drop"  # ... still no
    verdict_line = describe_failure(rule)
    assert "paired interval" in verdict_line and "186 rows" in verdict_line


def test_a_significant_drop_inside_the_allowed_drop_is_rejected(truth):
    cfg = _gate(max_drop=0.2)
    [acc, _] = compare_to_champion(truth, _flip(truth, 30), truth, 3, cfg)
    assert acc["value"] == pytest.approx(-0.1) and acc["threshold"] == -0.2
    assert acc["ci_high"] < 0
    assert acc["outcome"] == "significant drop" and not acc["passed"]
    small = compare_to_champion(truth, _shift(truth, slice(0, 2)), truth, 3, cfg)[0]
    assert small["passed"] and small["outcome"] == "no measured drop"  # allowed, not significant


def test_non_inferiority_promotes_an_equal_model_only_on_a_large_enough_split():
    rng = np.random.default_rng(3)
    cfg = _gate(max_drop=0.02, compare="non_inferiority",
                non_inferiority_margin={"accuracy": 0.03, "macro_f1": 0.03})

    def equal_models(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        champion, challenger = y.copy(), y.copy()
        wrong = rng.permutation(n)
        champion[wrong[: n // 5]] = (champion[wrong[: n // 5]] + 1) % 3      # 80% right ...
        challenger[wrong[n // 10: n // 10 + n // 5]] += 1                     # ... other rows
        return y, challenger % 3, champion

    small = compare_to_champion(*equal_models(150), 3, cfg)[0]
    assert small["value"] == pytest.approx(0.0)
    assert not small["passed"] and small["outcome"].startswith("undecided")
    assert small["ci_low"] < -0.03 and small["rows_needed"] > 150
    large = compare_to_champion(*equal_models(small["rows_needed"] * 2), 3, cfg)[0]
    assert large["passed"] and large["outcome"] == "non-inferior" and large["ci_low"] > -0.03


def test_rows_needed_scales_with_the_interval():
    assert rows_needed(100, -0.1, 0.1, 0.0, 0.05) == 400    # half-width 0.1 -> 0.05: 4x rows
    assert rows_needed(100, -0.1, 0.1, -0.05, 0.05) is None  # measured at -margin already


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


def test_unknown_gated_metric_is_named(tmp_path, tiny_backbone_dir):
    with pytest.raises(ConfigError, match="gate: min_metrics.recall: unknown metric"):
        tiny_test_params(tmp_path, tiny_backbone_dir, ["gate.min_metrics.recall=0.5"])
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
    assert names == ["min.accuracy", "min.macro_f1", "int8_confident_flips",
                     "int8_accuracy_change", "max_logit_diff", "latency_p95_ms", "size_mb"]
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
    assert any(r.startswith("vs_champion.accuracy") and "drop" in r for r in worse["reasons"])
    text = render_verdict(worse)
    assert "| accuracy |" in text and "paired interval" in text and "REJECTED" in text


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
    from components.release.export import write_manifest

    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    champion = tmp_path / "champion"
    shutil.copytree(bundles["good"]["bundle"], champion)
    (champion / "labels.json").write_text(json.dumps({"labels": ["a", "b", "c"]}))
    write_manifest(champion)
    verdict = run_gate(bundles["good"]["bundle"], bundles["good"]["prepared"], params, champion)
    assert not verdict["passed"]
    assert verdict["reasons"] == ["same_labels_as_champion = 0 < 1 "
                                  "(label set changed: promote by hand if intended)"]


def _parity(fp32_pred, int8_pred, y, probability) -> dict:
    return {"per_row": {"y": list(y), "fp32_pred": list(fp32_pred), "int8_pred": list(int8_pred),
                        "fp32_probability": list(probability)}}


def test_int8_near_tie_flips_pass_and_are_reported(truth):
    y = truth[:200]
    fp32 = _flip(y, 20)
    int8 = fp32.copy()
    int8[50:53] = (int8[50:53] + 1) % 3            # 3 right rows flip to wrong ...
    int8[10:12] = y[10:12]                         # ... 2 wrong rows flip to right
    probability = np.full(200, 0.99)
    probability[[10, 11, 50, 51, 52]] = 0.45       # all five are near-ties
    flips, change = int8_rules(_parity(fp32, int8, y, probability), _gate())
    assert flips["passed"] and flips["value"] == 0 and flips["near_tie_flips"] == 5
    assert flips["agreement"] == pytest.approx(195 / 200)
    assert change["value"] == pytest.approx(-0.005) and change["passed"]
    assert change["ci_low"] < 0 < change["ci_high"]
    strict = int8_rules(_parity(fp32, int8, y, probability),
                        _gate(int8_max_accuracy_drop=0.0))
    assert not strict[1]["passed"] and strict[1]["outcome"] == "drop beyond the allowed drop"


def test_int8_flipping_a_confident_prediction_fails(truth):
    y = truth[:200]
    fp32 = y.copy()
    int8 = fp32.copy()
    int8[7] = (int8[7] + 1) % 3                    # one flip, of a confident row
    probability = np.full(200, 0.6)
    probability[7] = 0.93
    flips, _ = int8_rules(_parity(fp32, int8, y, probability),
                          _gate(int8_max_accuracy_drop=0.05))
    assert not flips["passed"] and flips["value"] == 1 and flips["near_tie_flips"] == 0
    assert describe_failure(flips).startswith("int8_confident_flips = 1 > 0")
