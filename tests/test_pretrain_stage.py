"""The pretrain stage's guard: a linear probe on frozen features of the validation split,
before and after adaptation, decides which backbone fine-tuning starts from."""

from __future__ import annotations

import json

import pytest

from components.stages.chain import pretraining_texts, starting_backbone
from components.train.pretrain import METRICS_FILE, judge
from tests.conftest import tiny_rows
from tests.test_modeling import _with

# A deliberately damaged adaptation: a huge encoder learning rate scrambles the weights.
DAMAGE = {"pretrain.enabled": True, "pretrain.objective": "mlm", "pretrain.max_steps": 6,
          "model.pooling": "mean",  # a random [CLS] says little; a mean of tokens does
          "pretrain.head_warmup_steps": 0, "pretrain.encoder_lr": 0.5,
          "pretrain.warmup_ratio": 0.0}


def _prepared(params):
    from components import stages

    rows = tiny_rows(60)
    params.paths.raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stages.ingest(params)
    stages.prepare(params)
    return params


@pytest.mark.slow  # ingest, prepare, pretrain with two probes, a fine-tune with MLflow
def test_guard_discards_a_damaged_backbone_and_finetune_starts_from_the_original(
        tiny_params):
    from mlflow import MlflowClient

    from components import stages

    params = _prepared(_with(tiny_params, **DAMAGE))
    res = stages.pretrain(params)
    before, after = res["probe_before"], res["probe_after"]
    assert after["accuracy"] < before["accuracy"], (before, after)
    assert res["backbone"] == "original" and "lowered" in res["reason"]
    folder = params.paths.pretrained
    assert not (folder / "config.json").exists()  # the damaged weights are gone
    marker = json.loads((folder / METRICS_FILE).read_text())
    assert marker["backbone"] == "original" and marker["reason"] == res["reason"]
    logged = json.loads((params.paths.metrics / "pretrain.json").read_text())
    assert logged["probe_before"]["accuracy"] == before["accuracy"]
    assert logged["probe_after"]["accuracy"] == after["accuracy"]
    assert starting_backbone(params) is None

    tuned = stages.finetune(params)
    run = MlflowClient(params.registry.tracking_uri).get_run(tuned["mlflow_run_id"])
    assert run.data.tags["start_backbone"] == "original"
    assert run.data.tags["pretrain_guard"] == res["reason"]
    assert run.data.metrics["pretrain/probe_before_accuracy"] == before["accuracy"]
    assert run.data.metrics["pretrain/probe_after_accuracy"] == after["accuracy"]
    assert run.data.metrics["pretrain/adapted_backbone_kept"] == 0.0


def test_without_the_guard_the_damaged_backbone_is_kept(tiny_params):
    from components import stages

    params = _prepared(_with(tiny_params, **DAMAGE, **{"pretrain.keep_if_better": False}))
    res = stages.pretrain(params)
    assert res["probe_after"]["accuracy"] < res["probe_before"]["accuracy"]
    assert res["backbone"] == "adapted" and "keep_if_better is off" in res["reason"]
    assert starting_backbone(params) == params.paths.pretrained
    assert (params.paths.pretrained / "config.json").exists()


def _fake_probe(after_accuracy: float):
    """A probe that scores the original backbone 0.6 and an adapted one `after_accuracy`."""

    def probe(params, backbone, prepared_dir):
        accuracy = 0.6 if backbone is None else after_accuracy
        return {"accuracy": accuracy, "macro_f1": accuracy, "loss": 1.0 - accuracy,
                "train_accuracy": 0.9, "n_train": 1, "n_validation": 1, "seconds": 0.0}

    return probe


@pytest.mark.parametrize(("after", "kept"), [(0.7, True), (0.6, True), (0.5, False)])
def test_guard_keeps_a_better_backbone_and_discards_a_worse_one(tiny_params, monkeypatch,
                                                                 after, kept):
    from components import stages
    from components.train import pretrain as package

    monkeypatch.setattr(package, "probe_backbone", _fake_probe(after))
    params = _prepared(_with(tiny_params, **{"pretrain.enabled": True}))
    res = stages.pretrain(params)
    folder = params.paths.pretrained
    assert res["probe_before"]["accuracy"] == 0.6 and res["probe_after"]["accuracy"] == after
    assert res["backbone"] == ("adapted" if kept else "original")
    assert (folder / "config.json").exists() == kept
    assert json.loads((folder / METRICS_FILE).read_text())["backbone"] == res["backbone"]
    assert starting_backbone(params) == (folder if kept else None)


def test_guard_keeps_the_original_when_adaptation_diverges(tiny_params, monkeypatch):
    from components import stages
    from components.train import pretrain as package
    from components.train.pretrain import PretrainDiverged

    def diverge(*args, **kwargs):
        raise PretrainDiverged("pretraining diverged: loss nan at step 3")

    monkeypatch.setattr(package, "adapt_backbone", diverge)
    monkeypatch.setattr(package, "probe_backbone", _fake_probe(0.7))
    params = _prepared(_with(tiny_params, **{"pretrain.enabled": True}))
    res = stages.pretrain(params)
    assert res["backbone"] == "original" and "diverged" in res["reason"]
    assert starting_backbone(params) is None
    with pytest.raises(PretrainDiverged):
        stages.pretrain(_with(params, **{"pretrain.keep_if_better": False}), force=True)


@pytest.mark.parametrize("kept", [True, False])
def test_finetune_starts_from_the_backbone_the_guard_chose(tiny_params, monkeypatch, kept):
    from components import stages
    from components.train import finetune as training
    from components.train import pretrain as package

    monkeypatch.setattr(package, "probe_backbone", _fake_probe(0.7 if kept else 0.5))
    started_from = []

    def fake_train(params, prepared_dir, out_dir, *, init_dir=None, **kwargs):
        started_from.append(init_dir)
        return {"strategy": "adamw", "peft_method": "none", "steps": 1, "best_step": 1,
                "train_seconds": 0.0, "val_accuracy": 0.5}

    monkeypatch.setattr(training, "train", fake_train)
    params = _prepared(_with(tiny_params, **{"pretrain.enabled": True}))
    stages.pretrain(params)
    stages.finetune(params)
    assert started_from == [params.paths.pretrained if kept else None]


def test_judge_keeps_an_equal_or_better_backbone():
    assert judge({"accuracy": 0.8}, {"accuracy": 0.8}, True)[0]
    assert judge({"accuracy": 0.8}, {"accuracy": 0.9}, True)[0]
    keep, reason = judge({"accuracy": 0.8}, {"accuracy": 0.75}, True)
    assert not keep and "0.8000 -> 0.7500 (-5.0 pt)" in reason


def test_unlabeled_text_never_includes_validation_or_test_texts(tiny_params, tmp_path):
    from components.data.files import load_split

    params = _with(tiny_params, **{"paths.unlabeled": str(tmp_path / "unlabeled.txt")})
    rows = tiny_rows(60)
    params.paths.raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = ["an unlabeled note about the market", "another  note about rain"]
    # Every labeled text (with its whitespace changed) plus two new ones.
    (tmp_path / "unlabeled.txt").write_text(
        "\n".join([r["text"].replace(" ", "  ") for r in rows] + extra) + "\n")
    _prepared(params)
    texts, source, dropped = pretraining_texts(params)
    held = set(load_split(params.paths.prepared, "validation")[0]
               + load_split(params.paths.prepared, "test")[0])
    assert dropped == len(held) and "unlabeled" in source
    assert len(texts) == len(rows) + len(extra) - len(held)
    assert not held & {" ".join(t.split()) for t in texts}


def test_finetune_refuses_a_missing_pretrain_output(tiny_params):
    from components.stages import PretrainMissingError

    params = _with(tiny_params, **{"pretrain.enabled": True})
    with pytest.raises(PretrainMissingError, match="run `tuneline pretrain` first"):
        starting_backbone(params)
