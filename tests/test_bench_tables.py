"""The benchmark table of docs/benchmarks.md: rendered from bench/results/*.json, never stale."""

from __future__ import annotations

import json

import pytest

from tools import render_bench
from tools.render_bench import BEGIN, END, PAGE, RESULTS, render_block, render_row

RESULT_FILES = sorted(RESULTS.glob("*.json"))


def _row(name: str) -> str:
    return next(line for line in render_block().splitlines()
                if line.startswith(f"| `{name}` |"))


def test_committed_table_equals_its_rendering():
    page = PAGE.read_text()
    committed = page[page.index(BEGIN): page.index(END) + len(END)]
    assert committed == render_block(), f"{PAGE} is stale: run `python tools/render_bench.py`"
    assert render_bench.main(["--check"]) == 0


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.stem)
def test_every_results_file_has_a_row(path):
    row = _row(path.stem)
    data = json.loads(path.read_text())
    assert data["measured_at"].replace("T", " ").removesuffix("Z") in row
    if data.get("command"):
        assert data["command"].strip() in row


def test_prepare_row_shows_every_size_and_whether_each_goal_was_met():
    data = json.loads((RESULTS / "prepare.json").read_text())
    row = _row("prepare")
    for size in data["sizes"]:
        assert f"{size['rows']:,} CSV rows" in row
        assert f"{size['median_s']:.1f} s" in row and f"{size['peak_rss_mb']:,.0f} MB" in row
    verdict = "met" if data["goals"]["seconds_1m"] else "**not met**"
    assert f"1M rows <= {data['goal_s']:g} s: {verdict}" in row


def test_sweep_row_shows_the_cpu_seconds_the_trials_used():
    budget = json.loads((RESULTS / "sweep.json").read_text())["budget"]
    row = _row("sweep")
    assert f"trials used {budget['trials_cpu_seconds_used']:,.1f} CPU-s" in row
    assert f"{budget['cpu_seconds']:,.0f} CPU-s budget" in row


def test_an_unknown_results_file_gets_a_generic_row():
    row = render_row("new_bench", {"benchmark": "new_bench", "measured_at": "2026-01-02T03:04:05Z",
                                   "texts_per_s": 12.5, "goal_met": False, "setup": {}})
    assert row.startswith("| `new_bench` |")
    assert "keys: goal_met, setup, texts_per_s" in row
    assert "goal: **not met**" in row
    assert "2026-01-02 03:04:05" in row


def test_a_results_file_of_another_shape_names_itself():
    with pytest.raises(ValueError, match="prepare.json does not fit extractor prepare"):
        render_row("prepare", {"benchmark": "prepare", "seconds_median": 1.0})


def test_check_fails_on_a_stale_table_and_rendering_keeps_the_prose(tmp_path, monkeypatch):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Intro\n\nProse before.\n\n{BEGIN}\n| old | table |\n{END}\n\n"
                    "Prose after.\n")
    monkeypatch.setattr(render_bench, "PAGE", page)
    assert render_bench.main(["--check"]) == 1
    assert render_bench.main([]) == 0
    text = page.read_text()
    assert text.startswith("# Intro\n\nProse before.\n\n" + render_block())
    assert text.endswith(f"{END}\n\nProse after.\n")
    assert render_bench.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(render_bench.TABLES))
def test_a_benchmark_with_a_table_of_its_own_has_it_rendered_on_its_page(name):
    page, _ = render_bench.TABLES[name]
    begin, end = render_bench.table_markers(name)
    text = page.read_text()
    assert text[text.index(begin): text.index(end) + len(end)] == render_bench.render_table(name)
    if (RESULTS / f"{name}.json").exists():
        data = json.loads((RESULTS / f"{name}.json").read_text())
        assert data["command"].strip() in text
