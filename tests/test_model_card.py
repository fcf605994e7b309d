"""The model card renders what the chain measured, and names what should worry a reader."""

from __future__ import annotations

from components.registry.model_card import render_model_card

REPORT = {"n": 40, "accuracy": 0.9, "macro_f1": 0.88, "ece": 0.12, "labels": ["a", "b"],
          "per_class": {"a": {"precision": 0.9, "recall": 0.95, "f1": 0.92, "support": 30},
                        "b": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}}}
DATA = {"rows_in": 200, "rows_ok": 198, "bad_fraction": 0.01,
        "split_sizes": {"train": 158, "validation": 20, "test": 20},
        "class_counts": {"train": {"a": 120, "b": 38}, "test": {"a": 15, "b": 5}},
        "near_duplicates": {"threshold": 0.8, "rows": 3}}
VERDICT = {"passed": False, "reasons": ["vs_champion.accuracy: significant drop"],
           "rules": [{"name": "vs_champion.accuracy", "value": -0.05, "threshold": 0.0,
                      "op": ">=", "passed": False, "ci_low": -0.09, "ci_high": -0.01}]}


def test_the_card_shows_data_metrics_gate_and_limitations():
    card = render_model_card(name="m", version="7", task="sequence_classification",
                             data=DATA, report=REPORT, parity={"agreement": 1.0},
                             verdict=VERDICT, lineage={"data_version": "abc.dir"},
                             training={"strategy": "adamw"})
    assert card.startswith("# Model card: m v7\n") and "rejected by the gate" in card
    assert "| a | 120 | 15 |" in card                        # class balance per split
    assert "| vs_champion.accuracy | -0.05 | >= 0 | no | [-0.0900, -0.0100] |" in card
    assert "`b` has 10 test rows" in card                   # few examples
    assert "calibration error 0.120" in card                # poorly calibrated
    assert "3 test/validation rows have a near-duplicate" in card
    assert "| data_version | `abc.dir` |" in card


def test_a_card_with_nothing_to_worry_about_says_so():
    report = {**REPORT, "ece": 0.01, "per_class": {
        k: {**v, "support": 50} for k, v in REPORT["per_class"].items()}}
    card = render_model_card(name="m", version=None, task="sequence_classification",
                             data={**DATA, "near_duplicates": {}}, report=report, parity={},
                             verdict={"passed": True, "rules": []}, lineage={},
                             training={})
    assert "## Limitations\n\n- none measured" in card and "passed the gate" in card


def test_the_version_description_is_the_verdict_then_the_card_within_mlflows_limit():
    from components.registry.versions import MAX_TAG_CHARS, version_description

    card = render_model_card(name="m", version=None, task="sequence_classification",
                             data=DATA, report=REPORT, parity={}, verdict=VERDICT,
                             lineage={}, training={})
    text = version_description(VERDICT, card)
    assert text.startswith("gate rejected: vs_champion.accuracy: significant drop\n\n")
    assert "# Model card" not in text and "## Intended use" in text
    long = card + "".join(f"| tag{i} | `{'x' * 60}` |\n" for i in range(200))
    cut = version_description(VERDICT, long)
    assert len(cut) <= MAX_TAG_CHARS and cut.endswith("reports/card/model_card.md)\n")
    assert version_description({"passed": True, "reasons": []}) == "gate passed"
