"""Streaming prepare: same output as the whole-file prepare, chunk size irrelevant, bad rows
of late chunks keep their line, size guard."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.config import DataConfig, load_params
from components.data.demo import build_demo_corpus
from components.data.files import SPLITS, DataValidationError
from components.data.streaming import prepare_dataset
from tests.conftest import tiny_rows
from tests.data_scale_support import REFERENCE, prepared_digest, write_reference_inputs

OUTPUTS = ["train.jsonl", "validation.jsonl", "test.jsonl", "quarantine.jsonl", "labels.json",
           "report.json"]


def _files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


@pytest.fixture(scope="module")
def demo_jsonl(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("demo")
    build_demo_corpus(corpus, load_params().demo)
    return corpus / "labeled.jsonl"


@pytest.mark.parametrize("chunk_rows", [65536, 300])
def test_same_splits_and_quarantine_as_the_whole_file_prepare(tmp_path, demo_jsonl,
                                                              chunk_rows):
    """Figures recorded from the whole-file prepare (before streaming) on the demo corpus
    and on the demo corpus with bad rows of every kind mixed in."""
    expected = json.loads(REFERENCE.read_text())
    inputs = {"demo": demo_jsonl, **write_reference_inputs(demo_jsonl, tmp_path)}
    if sum(1 for _ in demo_jsonl.open()) != expected["demo"]["rows_in"]:
        pytest.skip(f"the demo corpus differs on this Python (reference made on "
                    f"{expected['python']})")
    cfg = DataConfig(chunk_rows=chunk_rows)
    for name, path in inputs.items():
        report = prepare_dataset(path, tmp_path / name, cfg)
        got = prepared_digest(tmp_path / name, report)
        want = {k: expected[name][k] for k in got}
        assert got == want, name
        # Near-duplicate counts: the same within the banding's tolerance.
        assert abs(report["near_duplicates"]["rows"] - expected[name]["near_duplicate_rows"]
                   ) <= 1


def _rows(n_per_class: int = 30) -> list[dict]:
    rows = [{**r, "customer": f"c{i % 17}"} for i, r in enumerate(tiny_rows(n_per_class))]
    rows[5] = {**rows[3]}                                            # duplicate
    rows[40] = {**rows[41], "label": "finance" if rows[41]["label"] != "finance" else "sports"}
    rows[60]["text"] = "  "                                          # empty
    rows[70]["text"] = "  padded   text with   spaces  "             # normalized on output
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path, row_group_size=16)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize("group", [None, "customer"])
def test_tiny_chunks_give_the_same_prepared_folder_as_one_chunk(tmp_path, suffix, group):
    src = _write(tmp_path / f"in{suffix}", _rows())
    whole = prepare_dataset(src, tmp_path / "whole", DataConfig(group_column=group))
    chunked = prepare_dataset(src, tmp_path / "chunked",
                              DataConfig(group_column=group, chunk_rows=3))
    assert chunked == whole
    assert _files(tmp_path / "chunked") == _files(tmp_path / "whole")
    assert whole["quarantined"] == {"conflicting_labels": 2, "duplicate": 1, "empty_text": 1}
    assert sum(whole["split_sizes"].values()) == whole["rows_ok"] == len(_rows()) - 4


def test_a_malformed_row_in_a_late_chunk_keeps_its_line_number(tmp_path):
    rows = tiny_rows(40)
    lines = [json.dumps(r) for r in rows]
    lines[100] = '{"text": "cut short'                      # line 101, chunk 11 of 12
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    csv = _write(tmp_path / "in.csv", rows)
    text = csv.read_text().splitlines()
    text[95] = 'a row,with,three fields'                  # line 96 of the file
    csv.write_text("\n".join(text) + "\n")
    cfg = DataConfig(chunk_rows=10)
    for path, line in ((jsonl, 101), (csv, 96)):
        out = tmp_path / path.suffix[1:]
        report = prepare_dataset(path, out, cfg)
        assert report["quarantined"] == {"malformed_row": 1}
        bad = [json.loads(q) for q in (out / "quarantine.jsonl").read_text().splitlines()]
        assert [(q["reason"], q["line"]) for q in bad] == [("malformed_row", line)]
        assert report["rows_in"] == len(rows)
        kept = sum(1 for s in SPLITS for _ in (out / f"{s}.jsonl").open())
        assert kept == len(rows) - 1


def test_the_size_guard_refuses_before_writing(tmp_path):
    src = _write(tmp_path / "in.csv", tiny_rows(20))
    out = tmp_path / "out"
    with pytest.raises(DataValidationError, match=r"more than data.max_rows=50 rows"):
        prepare_dataset(src, out, DataConfig(max_rows=50, chunk_rows=8))
    with pytest.raises(DataValidationError, match=r"bytes is more than data.max_bytes=100;"):
        prepare_dataset(src, out, DataConfig(max_bytes=100))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    for unlimited in (0, None):
        report = prepare_dataset(src, out, DataConfig(max_rows=unlimited, max_bytes=unlimited))
        assert report["rows_in"] == 60


def test_ingest_refuses_a_file_over_the_limit(tmp_path):
    from pipelines.cli import app

    src = _write(tmp_path / "in.csv", tiny_rows(20))
    result = CliRunner().invoke(app, ["ingest", "--input", str(src), "--set",
                                      f"paths.input={tmp_path / 'input'}",
                                      "--set", "data.max_rows=10"])
    assert result.exit_code == 2
    assert "data.max_rows=10" in result.output
    assert not (tmp_path / "input").exists()


_AWKWARD = ["plain text here", "  padded   text  ", "tab\tand\nnewline", "x\x1cfile sep",
            "\u00e9t\u00e9 d\u00e9j\u00e0", "cafe\u0301 decomposed", "non\u00a0breaking space",
            'a "quoted" back\\slash', "bell\x07 inside", "", "   ", None, "ab", "abc",
            "w" * 30 + " " + "v" * 30, "trailing space ", " leading", "\u3000ideographic"]
_LABELS = ["sports", " sports ", "", None, "finance", "other", "finance\t"]


@pytest.mark.parametrize("cfg", [
    DataConfig(), DataConfig(max_chars=20), DataConfig(max_chars=20, overlong="reject"),
    DataConfig(labels=["sports", "finance"]), DataConfig(group_column="customer")])
def test_column_checks_equal_row_checks(cfg):
    """Checking a chunk column by column (Arrow) gives what check_row gives row by row."""
    import pyarrow as pa

    from components.data.checks import check_columns, check_rows
    from components.data.chunks import ColumnChunk

    rows = [{"text": t, "label": lab, "customer": g}
            for i, t in enumerate(_AWKWARD) for lab, g in
            ((_LABELS[i % len(_LABELS)], [" c1", "", None, "c2"][i % 4]),
             (_LABELS[(i + 3) % len(_LABELS)], "c3"))]
    fields = {"text": "text", "label": "label"}
    if cfg.group_column:
        fields["group"] = "customer"
    chunk = ColumnChunk({k: pa.array([r[c] for r in rows], type=pa.string())
                         for k, c in fields.items()}, first_line=2)
    by_rows = check_rows(chunk.rows(), cfg)
    by_columns = check_columns(chunk, cfg)
    assert by_columns.reasons.tolist() == by_rows.reasons.tolist()
    passed = [i for i, r in enumerate(by_rows.reasons) if r == ""]
    assert 0 < len(passed) < len(rows)
    for name in ("norms", "labels", "groups"):
        want, got = getattr(by_rows, name), getattr(by_columns, name)
        assert (got is None) == (want is None)
        assert [got[i] for i in passed] == [want[i] for i in passed] if want else True
    assert by_columns.lines.tolist() == by_rows.lines.tolist()
    assert by_columns.rows(passed[:3]) == by_rows.rows(passed[:3])


@pytest.mark.parametrize("group", [None, "customer"])
def test_arrow_staged_lines_are_the_json_lines(group):
    import pyarrow as pa

    from components.data.lines import json_line, kept_line, kept_lines

    texts = ['a "quoted" back\\slash', "\u00e9t\u00e9 \U0001f600", "plain", "x/y <b> \u2028"]
    labels = ["l\\1", 'say "x"', "plain", "\u00e9"]
    groups = ["g1", "g\\2", '"g3"', "g 4"] if group else None
    for case in (texts, [*texts, "bell\x07 inside"]):  # the second is left to json
        lab = (labels * 2)[: len(case)]
        grp = (groups * 2)[: len(case)] if groups else None
        staged, sizes = kept_lines(pa.array(case, type=pa.string()), lab, grp)
        by_json, json_sizes = kept_lines(list(case), lab, grp)  # a list: json's encoder
        assert bytes(staged) == by_json and sizes.tolist() == json_sizes.tolist()
        want = [kept_line(t, x, g) for t, x, g in zip(case, lab, grp or [None] * len(case),
                                                     strict=True)]
        assert bytes(staged) == b"".join(want)
        assert sizes.tolist() == [len(w) for w in want]
        assert want == [json_line({"text": t, "label": x, **({"group": g} if g else {})})
                        for t, x, g in zip(case, lab, grp or [None] * len(case), strict=True)]


def test_split_indices_match_assign_split():
    from components.data.checks import assign_split, split_indices

    cfg = DataConfig()
    keys = [f"text {i}" for i in range(3000)] + ["", "\u00e9", "x" * 5000]
    want = [SPLITS.index(assign_split(k, cfg)) for k in keys]
    assert split_indices(keys, cfg).tolist() == want
    assert set(want) == {0, 1, 2}


def test_chunks_too_large_for_arrow_strings_take_python_lines(tmp_path, monkeypatch):
    import components.data.streaming as streaming

    src = _write(tmp_path / "in.csv", _rows())
    arrow = prepare_dataset(src, tmp_path / "arrow", DataConfig())
    monkeypatch.setattr(streaming, "_ARROW_CHARS", 0)
    python = prepare_dataset(src, tmp_path / "python", DataConfig())
    assert python == arrow and _files(tmp_path / "python") == _files(tmp_path / "arrow")
