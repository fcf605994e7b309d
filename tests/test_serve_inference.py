"""Length-bucketed inference gives the per-text answers, in the caller's order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.release.inference import BucketedClassifier, plan_groups
from components.release.predictor import FP32_MODEL, OnnxClassifier
from tests.conftest import TINY_LABELS
from tests.serve_support import export_tiny_bundle


def test_plan_groups_cuts_where_padding_costs_more_than_a_call():
    lengths = [5, 5, 6, 6, 30, 31, 64]
    assert plan_groups(lengths, call_cost_tokens=8, max_rows=32) == [
        slice(0, 4), slice(4, 6), slice(6, 7)]
    # a huge call cost means one padded batch; max_rows still caps a group
    assert plan_groups(lengths, call_cost_tokens=10_000, max_rows=32) == [slice(0, 7)]
    assert plan_groups(lengths, call_cost_tokens=10_000, max_rows=3) == [
        slice(0, 3), slice(3, 6), slice(6, 7)]
    assert plan_groups([], 8, 4) == []
    covered = [i for g in plan_groups(sorted(np.random.default_rng(0).integers(1, 64, 50)),
                                      16, 8) for i in range(g.start, g.stop)]
    assert covered == list(range(50))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tokenizer_dir) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("bucket") / "bundle", tokenizer_dir,
                              TINY_LABELS, seed=5)


def varied_texts() -> list[str]:
    words = ["market", "rain", "goal", "storm", "bank", "coach", "wind", "loan", "league", "snow"]
    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(words, int(n))) for n in rng.integers(1, 40, 25)]


def test_bucketed_fp32_matches_one_text_at_a_time(bundle):
    texts = varied_texts()
    single = OnnxClassifier(bundle, model_file=FP32_MODEL, threads=1, verify=False)
    want = np.concatenate([single.logits([t]) for t in texts])
    bucketed = BucketedClassifier(single, call_cost_tokens=8, max_rows=4)
    got = bucketed.logits(texts)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_bucketed_int8_predictions_match_the_plain_classifier(bundle):
    texts = varied_texts()
    plain = OnnxClassifier(bundle, threads=1)
    want = plain.predict(texts, batch_size=1)
    got = BucketedClassifier(plain, call_cost_tokens=16, max_rows=8).predict(texts)
    assert [p.label for p in got] == [p.label for p in want]
    for g, w in zip(got, want, strict=True):
        assert list(g.scores) == TINY_LABELS
        assert g.score == pytest.approx(w.score, abs=0.02)  # int8 scales depend on padding
    assert BucketedClassifier(plain, 16, 8).predict([]) == []
