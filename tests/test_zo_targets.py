"""Zeroth-order targets: which parameters move, that the rest never does, and the config."""

from __future__ import annotations

import pytest
import torch
import yaml

from components.config import DEFAULT_PARAMS, ConfigError, FinetuneConfig, load_params
from components.model.modeling import build_classifier, trainable_parameters
from components.train.finetune.base import build_strategy
from components.train.finetune.zo_target import is_bias_or_norm, select_target
from tests.conftest import TINY_LABELS, tiny_rows
from tests.test_zeroth_order import loss_fn, make_batch, one_thread, snapshot  # noqa: F401


def tiny(tiny_params, method="none"):
    tiny_params.peft.method = method
    model, tok = build_classifier(tiny_params, TINY_LABELS)
    return model.eval(), tok


def names(chosen):
    return {n for n, _ in chosen}


def test_targets_select_biases_norms_top_layers_and_always_the_head(tiny_params):
    model, _ = tiny(tiny_params)
    params = trainable_parameters(model)
    assert names(select_target(params, "all", 1)) == names(params)
    bitfit = names(select_target(params, "bitfit", 1))
    assert {"classifier.weight", "classifier.bias",
            "bert.encoder.layer.0.attention.self.query.bias",
            "bert.encoder.layer.1.output.LayerNorm.weight",
            "bert.embeddings.LayerNorm.bias"} <= bitfit
    assert all(is_bias_or_norm(n) or n.startswith("classifier.") for n in bitfit)
    assert "bert.encoder.layer.0.attention.self.query.weight" not in bitfit
    assert "bert.pooler.dense.weight" not in bitfit  # (cls pooling) a matrix, not a bias
    top = names(select_target(params, "top_layers", 1))
    assert "bert.encoder.layer.1.attention.self.query.weight" in top
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= top
    assert not any(".layer.0." in n or "embeddings" in n for n in top)
    assert names(select_target(params, "top_layers", 2)) > top


def test_targets_that_cannot_work_fail_with_a_hint(tiny_params):
    model, _ = tiny(tiny_params)
    with pytest.raises(ValueError, match="top_layers=3 but the trainable parameters span 2"):
        select_target(trainable_parameters(model), "top_layers", 3)
    lora, _ = tiny(tiny_params, "lora")
    tiny_params.finetune.strategy = "mezo"
    tiny_params.finetune.mezo.target = "bitfit"
    with pytest.raises(ValueError, match=r"finetune\.mezo\.target: .*use target all"):
        build_strategy(tiny_params.finetune, trainable_parameters(lora), 10)
    # On LoRA the top-layers target keeps the adapters of the last layers.
    tiny_params.finetune.mezo.target = "top_layers"
    tiny_params.finetune.mezo.top_layers = 1
    strategy = build_strategy(tiny_params.finetune, trainable_parameters(lora), 10)
    assert any("layer.1." in n and "lora_A" in n for n, _ in strategy.params)
    assert not any("layer.0." in n for n, _ in strategy.params)


@pytest.mark.parametrize("strategy", ["mezo", "zo_sign", "es", "cem"])
def test_only_the_target_moves(tiny_params, strategy):
    model, tok = tiny(tiny_params)
    batches = [make_batch(tok, tiny_rows(4)[i: i + 6]) for i in range(0, 12, 6)]
    tiny_params.finetune.strategy = strategy
    section = getattr(tiny_params.finetune, strategy)
    section.target = "bitfit"
    before = snapshot(model)
    built = build_strategy(tiny_params.finetune, trainable_parameters(model), 10)
    # Everything outside the target is frozen for the run (and so not checkpointed).
    assert names(trainable_parameters(model)) == names(built.params)
    with torch.inference_mode():
        for step, batch in enumerate(batches * 2):
            built.step(model, batch, loss_fn, step)
    target = names(built.params)
    after = model.state_dict()
    moved = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert moved and moved <= target, moved - target


def test_finetune_defaults_in_code_equal_params_yaml():
    shipped = yaml.safe_load(DEFAULT_PARAMS.read_text())["finetune"]
    assert FinetuneConfig().model_dump(mode="json") == FinetuneConfig(**shipped).model_dump(
        mode="json")


@pytest.mark.parametrize(("override", "message"), [
    ("finetune.mezo.target=embeddings", "finetune.mezo.target"),
    ("finetune.cem.sparse_embeddings=true", "finetune.cem.sparse_embeddings: unknown key"),
    ("finetune.mezo.estimator=fzoo", "finetune.mezo.estimator: unknown key"),
    ("finetune.cem.elite_fraction=0.01", "selects no sample"),
    ("finetune.cem.sigma_min=1", "sigma_min"),
])
def test_bad_zeroth_order_settings_fail_loudly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=[override])
