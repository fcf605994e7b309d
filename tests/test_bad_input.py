"""Bad input to `tuneline run`: one clear line, a non-zero exit, and nothing touched: no
prepared data, no input snapshot, no MLflow run, no registry change, no Prefect server."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import tiny_overrides, tiny_rows


def _cases(tmp):
    rows = tiny_rows(10)
    pd.DataFrame(rows).to_csv(tmp / "good.csv", index=False)
    pd.DataFrame([{"text": r["text"]} for r in rows]).to_csv(tmp / "nolabel.csv", index=False)
    pd.DataFrame({"text": list(range(30)), "label": [r["label"] for r in rows]}).to_parquet(
        tmp / "numbers.parquet")
    (tmp / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    return {
        "missing file": (["--input", str(tmp / "nowhere.csv")], "input not found"),
        "unsupported extension": (["--input", str(tmp / "sheet.xlsx")],
                                  "unsupported extension '.xlsx'"),
        "csv without the label column": (["--input", str(tmp / "nolabel.csv")],
                                         "missing column(s) ['label']"),
        "parquet with a non-string text column": (["--input", str(tmp / "numbers.parquet")],
                                                  "column 'text' holds int64, not text"),
        # (--strategy and --peft are choices Typer checks: tests/test_cli_conventions.py)
        "unknown strategy": (["--input", str(tmp / "good.csv"), "--set",
                              "finetune.strategy=bogus"],
                             "unknown strategy 'bogus'; valid: adamw, cem, es, mezo, zo_sign"),
        "unknown peft method": (["--input", str(tmp / "good.csv"), "--set", "peft.method=dora"],
                                "peft.method: Input should be"),
    }


CASES = ["missing file", "unsupported extension", "csv without the label column",
         "parquet with a non-string text column", "unknown strategy", "unknown peft method"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_in_one_line_and_changes_nothing(case, tmp_path, tiny_backbone_dir):
    args, message = _cases(tmp_path)[case]
    sets = [s for s in tiny_overrides(tmp_path, tiny_backbone_dir)
            if not s.startswith("paths.raw=")]
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "labels.json").write_text(json.dumps({"labels": ["earlier", "data"]}))
    before = {p.name: p.read_bytes() for p in prepared.iterdir()}

    result = CliRunner().invoke(app, ["run", *args, *[a for s in sets for a in ("--set", s)]])

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert {p.name: p.read_bytes() for p in prepared.iterdir()} == before
    assert not (tmp_path / "input").exists()          # no snapshot replaced
    assert not (tmp_path / "mlflow.db").exists()      # no MLflow run, no registry change
    assert not (tmp_path / "mlartifacts").exists()
