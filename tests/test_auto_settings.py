"""Settings read from the data (`auto` length and steps) and early stopping that a small,
noisy validation split cannot fool."""

from __future__ import annotations

import numpy as np
import pytest

from components.config import load_params
from components.train.auto import backbone_limit, choose_max_length, choose_steps, resolve
from components.train.finetune.validation import EarlyStopper
from tests.conftest import tiny_rows, write_prepared


def test_length_covers_the_share_rounded_up_and_capped():
    lengths = np.arange(1, 101)  # 1..100 tokens
    assert choose_max_length(lengths, 0.95, cap=256, limit=512) == 96   # 95.05 -> 96
    assert choose_max_length(lengths, 0.5, cap=256, limit=512) == 64    # 50.5 -> 64
    assert choose_max_length(lengths, 1.0, cap=64, limit=512) == 64     # the cost cap
    assert choose_max_length(lengths, 1.0, cap=256, limit=80) == 80     # the backbone's limit
    assert choose_max_length(np.array([3, 4]), 0.95, cap=256, limit=512) == 16


def test_steps_follow_the_train_size_within_bounds():
    assert choose_steps(3000, 16, 3.0, 500, 3000) == 564     # 188 a pass x 3
    assert choose_steps(1200, 16, 3.0, 500, 3000) == 500     # small data: at least min_steps
    assert choose_steps(100_000, 16, 3.0, 500, 3000) == 3000
    assert choose_steps(3000, 32, 3.0, 100, 3000) == choose_steps(3000, 16, 1.5, 100, 3000)


def test_the_limit_is_the_smaller_of_tokenizer_and_positions():
    class Tok:
        model_max_length = 10**30  # transformers' "no limit"

    class Cfg:
        max_position_embeddings = 128

    assert backbone_limit(Tok()) == 512
    assert backbone_limit(Tok(), Cfg()) == 128


@pytest.fixture()
def short_and_long(tmp_path):
    rows = tiny_rows(60)
    longer = [{**r, "text": " ".join([r["text"]] * 6)} for r in rows]
    return (write_prepared(tmp_path / "short", rows), write_prepared(tmp_path / "long", longer))


def test_auto_reads_the_data_and_an_explicit_number_wins(short_and_long, tiny_backbone_dir,
                                                         tokenizer_dir):
    short, long = short_and_long
    params = load_params(overrides=[f"model.name_or_path={tiny_backbone_dir}",
                                    "finetune.batch_size=8"])
    assert params.model.max_length == "auto" and params.finetune.max_steps == "auto"
    a, chose_short = resolve(params, short)
    b, chose_long = resolve(params, long)
    assert isinstance(a.model.max_length, int) and a.model.max_length < b.model.max_length
    assert b.model.max_length <= 128  # the tiny backbone's position embeddings
    assert chose_short["truncated_share"] <= 1 - params.model.length_coverage + 1e-9
    assert a.finetune.max_steps == params.finetune.min_steps  # 60 rows: the floor
    assert a.finetune.eval_every == 50 and a.finetune.checkpoint_every == 50
    assert chose_long["max_length"] == b.model.max_length
    fixed = load_params(overrides=[f"model.name_or_path={tiny_backbone_dir}",
                                   "model.max_length=24", "finetune.max_steps=40",
                                   "finetune.eval_every=7"])
    c, chose = resolve(fixed, long)
    assert (c.model.max_length, c.finetune.max_steps, c.finetune.eval_every) == (24, 40, 7)
    assert c.finetune.checkpoint_every == 7 and chose["truncated_share"] > 0.5
    assert "max_length_auto" not in chose and "max_steps_auto" not in chose


def test_a_lucky_early_peak_neither_stops_the_run_nor_ships():
    # 144 validation rows: one standard error of 0.80 is 0.033.
    s = EarlyStopper(metric="accuracy", patience=2, min_delta=0.0, noise_z=1.0, min_steps=0)
    curve = [(100, 0.80), (200, 0.77), (300, 0.78), (400, 0.79), (500, 0.80)]
    shipped = [step for step, acc in curve if s.update({"accuracy": acc, "n": 144}, step)]
    assert not s.should_stop
    assert shipped == [100, 200, 300, 400, 500] and s.best_step == 500 and s.peak_step == 100
    assert "within 1 standard errors" in s.reason
    # Without the noise rule the same curve stops at step 300 and ships step 100.
    plain = EarlyStopper(metric="accuracy", patience=2, min_delta=0.0)
    for step, acc in curve[:3]:
        plain.update({"accuracy": acc, "n": 144}, step)
    assert plain.should_stop and plain.best_step == 100


def test_a_real_drop_stops_and_ships_the_peak():
    s = EarlyStopper(metric="accuracy", patience=2, min_delta=0.0, noise_z=1.0, min_steps=0)
    for step, acc in [(100, 0.70), (200, 0.85), (300, 0.70), (400, 0.68)]:
        s.update({"accuracy": acc, "n": 1000}, step)
    assert s.should_stop and s.best_step == 200 and s.peak_step == 200


def test_no_stop_before_the_minimum_share_of_steps():
    s = EarlyStopper(metric="accuracy", patience=1, min_delta=0.0, noise_z=0.0, min_steps=300)
    s.update({"accuracy": 0.9, "n": 100}, 100)
    s.update({"accuracy": 0.5, "n": 100}, 200)
    assert not s.should_stop
    s.update({"accuracy": 0.5, "n": 100}, 300)
    assert s.should_stop


def test_a_model_trained_with_auto_settings_records_them_and_exports(tmp_path,
                                                                     tiny_backbone_dir):
    import json

    from components.evaluate.scoring import evaluate_model
    from components.model.modeling import load_trained
    from components.release.bundle import export_bundle
    from components.train.finetune import train
    from tests.conftest import TINY_HEAD

    prepared = write_prepared(tmp_path / "prepared", tiny_rows(30))
    params = load_params(overrides=[
        f"model.name_or_path={tiny_backbone_dir}", *TINY_HEAD, "finetune.batch_size=8",
        "finetune.min_steps=12", "finetune.epochs=1", "model.num_threads=1",
        "export.latency_repeats=2", f"paths.checkpoints={tmp_path / 'ck'}"])
    assert params.model.max_length == "auto" and params.finetune.max_steps == "auto"
    metrics = train(params, prepared, tmp_path / "model")
    assert metrics["steps"] == metrics["max_steps"] == 12 and metrics["eval_every"] == 1
    meta = load_trained(tmp_path / "model").meta
    assert meta["max_length"] == metrics["max_length"] and isinstance(meta["max_length"], int)
    report = evaluate_model(tmp_path / "model", prepared, tmp_path / "eval", params)
    assert report["n"] > 0
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())["model"]
    assert saved["max_length"] == meta["max_length"]
    assert saved["truncated_share"] == metrics["truncated_share"]
    export_bundle(tmp_path / "model", prepared, tmp_path / "bundle", params)
    config = json.loads((tmp_path / "bundle" / "export_config.json").read_text())
    assert config["max_length"] == meta["max_length"]
