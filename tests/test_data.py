"""Data ingest: every bad-row kind, atomic failure, stable splits, all three formats."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.config import DataConfig
from components.data.checks import (
    CONFLICTING_LABELS,
    DUPLICATE,
    EMPTY_TEXT,
    MALFORMED_ROW,
    MISSING_GROUP,
    MISSING_LABEL,
    OVERLONG_TEXT,
    TEXT_NOT_STRING,
    UNKNOWN_LABEL,
    assign_split,
)
from components.data.files import SPLITS, DataValidationError, load_split, load_unlabeled
from components.data.streaming import prepare_dataset
from tests.conftest import tiny_rows


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def _quarantine_reasons(out: Path) -> dict[str, list]:
    found: dict[str, list] = {}
    for q in _read_jsonl(out / "quarantine.jsonl"):
        found.setdefault(q["reason"], []).append(q)
    return found


def test_each_bad_row_kind_is_quarantined_with_its_reason(tmp_path):
    good = tiny_rows(n_per_class=20)
    bad_lines = [
        '{"text": "   ", "label": "sports"}',                      # empty after strip
        '{"text": 12345, "label": "sports"}',                      # not a string
        '{"text": "a text with no label at all", "label": null}',  # missing label
        '{"text": "a text with an empty label", "label": "  "}',   # missing label
        '{"text": "a text about cooking pasta", "label": "food"}',  # outside declared set
        '{"text": "' + "long " * 100 + '", "label": "finance"}',     # over max_chars
        json.dumps(good[0]),                                        # exact duplicate
        '{"text": "rain or stock market", "label": "weather"}',     # conflicting labels ...
        '{"text": "rain  or stock market", "label": "finance"}',    # ... (whitespace differs)
        "{not json",                                                # malformed line
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in good) + "\n".join(bad_lines) + "\n")
    cfg = DataConfig(labels=["sports", "weather", "finance"], max_chars=200, overlong="reject",
                     max_bad_fraction=0.5)

    report = prepare_dataset(src, tmp_path / "out", cfg)

    expected = {EMPTY_TEXT: 1, TEXT_NOT_STRING: 1, MISSING_LABEL: 2, UNKNOWN_LABEL: 1,
                OVERLONG_TEXT: 1, DUPLICATE: 1, CONFLICTING_LABELS: 2, MALFORMED_ROW: 1}
    assert report["quarantined"] == expected
    assert report["rows_in"] == len(good) + len(bad_lines)
    assert report["rows_ok"] == len(good)
    reasons = _quarantine_reasons(tmp_path / "out")
    assert {k: len(v) for k, v in reasons.items()} == expected
    assert reasons[TEXT_NOT_STRING][0]["text"] == 12345          # original value kept
    assert reasons[DUPLICATE][0]["line"] == len(good) + 7         # the later copy is rejected
    kept = sum(len(_read_jsonl(tmp_path / "out" / f"{s}.jsonl")) for s in SPLITS)
    assert kept == len(good)


def test_overlong_text_is_truncated_when_params_say_so(tmp_path):
    rows = tiny_rows(n_per_class=10) + [{"text": "word " * 100, "label": "sports"}]
    out = tmp_path / "out"
    report = prepare_dataset(_write(tmp_path / "in.jsonl", rows), out,
                             DataConfig(max_chars=50, overlong="truncate"))
    assert report["quarantined"] == {}
    texts = [r["text"] for s in SPLITS for r in _read_jsonl(out / f"{s}.jsonl")]
    assert max(len(t) for t in texts) <= 50


def test_too_many_bad_rows_fails_and_writes_nothing(tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(_write(tmp_path / "good.jsonl", tiny_rows()), out, DataConfig())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rows = tiny_rows(n_per_class=10) + [{"text": "", "label": "sports"}] * 20
    with pytest.raises(DataValidationError, match=r"data.max_bad_fraction.*empty_text"):
        prepare_dataset(_write(tmp_path / "bad.jsonl", rows), out, DataConfig(max_bad_fraction=0.2))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # old output intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "prepared"]


def test_cli_exits_nonzero_with_a_clear_message(tmp_path):
    from pipelines.cli import app

    bad = _write(tmp_path / "bad.csv", [{"text": "", "label": "x"}] * 5 + tiny_rows(2))
    result = CliRunner().invoke(app, ["ingest", "--input", str(bad), "--set",
                                      f"paths.input={tmp_path / 'input'}"])
    assert result.exit_code == 2
    assert "max_bad_fraction" in result.output
    assert not (tmp_path / "input").exists()


def test_appending_rows_never_moves_an_existing_row(tmp_path):
    cfg = DataConfig()
    first = tiny_rows(n_per_class=60, seed=1)
    more = tiny_rows(n_per_class=60, seed=2)
    prepare_dataset(_write(tmp_path / "a.jsonl", first), tmp_path / "a", cfg)
    prepare_dataset(_write(tmp_path / "b.jsonl", first + more), tmp_path / "b", cfg)
    for split in SPLITS:
        old = {r["text"] for r in _read_jsonl(tmp_path / "a" / f"{split}.jsonl")}
        new = {r["text"] for r in _read_jsonl(tmp_path / "b" / f"{split}.jsonl")}
        assert old <= new, f"rows left the {split} split when data was appended"


def test_split_fractions_hold_on_average():
    cfg = DataConfig(validation_fraction=0.1, test_fraction=0.2)
    counts = {s: 0 for s in SPLITS}
    for i in range(20000):
        counts[assign_split(f"document number {i}", cfg)] += 1
    assert abs(counts["test"] / 20000 - 0.2) < 0.015
    assert abs(counts["validation"] / 20000 - 0.1) < 0.015


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_all_three_formats_give_the_same_prepared_data(tmp_path, suffix):
    rows = tiny_rows(n_per_class=15) + [{"text": "", "label": "sports"}]
    out = tmp_path / "out"
    report = prepare_dataset(_write(tmp_path / f"in{suffix}", rows), out, DataConfig())
    assert report["rows_in"] == len(rows)
    assert report["quarantined"] == {EMPTY_TEXT: 1}
    reference = tmp_path / "ref"
    prepare_dataset(_write(tmp_path / "ref.jsonl", rows), reference, DataConfig())
    for split in SPLITS:
        assert load_split(out, split) == load_split(reference, split)


def test_a_numeric_text_column_is_reported_as_not_text(tmp_path):
    # Parquet columns are typed: a number column where text belongs fails on the file.
    src = tmp_path / "in.parquet"
    pd.DataFrame({"text": list(range(30)), "label": ["a", "b", "c"] * 10}).to_parquet(src)
    with pytest.raises(DataValidationError, match="column 'text' holds int64, not text"):
        prepare_dataset(src, tmp_path / "out", DataConfig())
    assert not (tmp_path / "out").exists()


def test_custom_column_names_and_missing_column_error(tmp_path):
    rows = [{"body": r["text"], "y": r["label"]} for r in tiny_rows(10)]
    src = _write(tmp_path / "in.csv", rows)
    report = prepare_dataset(src, tmp_path / "out", DataConfig(text_column="body",
                                                               label_column="y"))
    assert report["rows_ok"] == len(rows)
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['text', 'label'\]"):
        prepare_dataset(src, tmp_path / "out2", DataConfig())


def test_unsupported_extension_and_single_class(tmp_path):
    with pytest.raises(DataValidationError, match="unsupported extension"):
        prepare_dataset(_write(tmp_path / "in.jsonl", tiny_rows(3)).rename(tmp_path / "in.xls"),
                        tmp_path / "out", DataConfig())
    one_class = [r for r in tiny_rows(10) if r["label"] == "sports"]
    with pytest.raises(DataValidationError, match="at least two classes"):
        prepare_dataset(_write(tmp_path / "one.jsonl", one_class), tmp_path / "out", DataConfig())


def test_report_counts_classes_per_split(tmp_path):
    report = prepare_dataset(_write(tmp_path / "in.jsonl", tiny_rows(30)), tmp_path / "out",
                             DataConfig())
    assert sum(sum(c.values()) for c in report["class_counts"].values()) == 90
    assert report["labels"] == sorted({"sports", "weather", "finance"})
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report


def test_load_unlabeled_reads_txt_and_jsonl(tmp_path):
    (tmp_path / "u.txt").write_text("first doc\n\nsecond doc\n")
    (tmp_path / "u.jsonl").write_text('{"text": "first doc"}\n{"text": 3}\n')
    assert load_unlabeled(tmp_path / "u.txt") == ["first doc", "second doc"]
    assert load_unlabeled(tmp_path / "u.jsonl") == ["first doc"]


def test_rows_of_one_group_share_a_split(tmp_path):
    rows = [{**r, "customer": f"c{i % 12}"} for i, r in enumerate(tiny_rows(40))]
    rows.append({"text": "a row whose customer is unknown", "label": "sports", "customer": ""})
    out = tmp_path / "out"
    report = prepare_dataset(_write(tmp_path / "in.jsonl", rows), out,
                             DataConfig(group_column="customer", test_fraction=0.25,
                                        validation_fraction=0.25))
    groups = {s: {r["group"] for r in _read_jsonl(out / f"{s}.jsonl")} for s in SPLITS}
    assert sum(len(g) for g in groups.values()) == 12            # no group in two splits
    assert all(groups.values())                                  # and every split has some
    assert report["groups"] == {s: len(groups[s]) for s in SPLITS}
    assert report["quarantined"] == {MISSING_GROUP: 1}
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['account'\]"):
        prepare_dataset(_write(tmp_path / "in.csv", rows), tmp_path / "o2",
                        DataConfig(group_column="account"))


def test_near_duplicates_across_splits_are_counted(tmp_path):
    base = tiny_rows(40)
    # Light edits of training texts: another split holding one inflates the test score.
    edits = [{"text": r["text"] + " indeed", "label": r["label"]} for r in base]
    report = prepare_dataset(_write(tmp_path / "in.jsonl", base + edits), tmp_path / "out",
                             DataConfig())
    near = report["near_duplicates"]
    assert near["threshold"] == 0.8 and near["rows"] > 0
    assert sum(near["by_splits"].values()) >= near["rows"]
    split_of = {r["text"]: s for s in SPLITS for r in _read_jsonl(tmp_path / "out" /
                                                                   f"{s}.jsonl")}
    crossing = sum(split_of[e["text"]] != split_of[b["text"]]
                   for b, e in zip(base, edits, strict=True))
    assert near["rows"] <= crossing
    for split_a, _, split_b, _, score in near["examples"]:
        assert split_a != split_b and score >= 0.8
    clean = prepare_dataset(_write(tmp_path / "clean.jsonl", base), tmp_path / "c", DataConfig())
    assert clean["near_duplicates"]["rows"] == 0
