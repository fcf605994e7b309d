"""Pretraining objectives lower their own held-out loss, the head warm-up trains only the new
head, and the adapted backbone is what the classifier loads."""

from __future__ import annotations

import json
import typing

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from components.config import PretrainConfig
from components.model.modeling import build_classifier, resolve_backbone
from components.train.pretrain import (
    METRICS_FILE,
    OBJECTIVES,
    adapt_backbone,
    mask_tokens,
    set_phase,
    split_heldout,
)
from components.train.pretrain.loop import TextSampler, run_phase
from pipelines.cli import app
from tests.conftest import TINY_LABELS, tiny_rows
from tests.test_modeling import _with

# Per objective: settings under which a tiny random BERT learns visibly in a few steps.
LEARNS = {"mlm": {"pretrain.encoder_lr": 2e-3, "pretrain.head_warmup_steps": 5},
          "simcse": {"pretrain.encoder_lr": 1e-2, "pretrain.simcse.temperature": 0.05}}


def _texts(n_per_class: int = 30) -> list[str]:
    return [r["text"] for r in tiny_rows(n_per_class, seed=5)]


def test_every_registered_objective_is_a_valid_setting():
    allowed = typing.get_args(PretrainConfig.model_fields["objective"].annotation)
    assert set(allowed) == set(OBJECTIVES) == set(LEARNS)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_objective_lowers_its_own_heldout_loss(objective, tiny_params, tiny_backbone_dir,
                                                tmp_path):
    params = _with(tiny_params, **{"pretrain.enabled": True, "pretrain.objective": objective,
                                   "pretrain.max_steps": 15, "pretrain.lr": 2e-3,
                                   **LEARNS[objective]})
    metrics = adapt_backbone(params, _texts(), tmp_path / "pre")
    assert metrics["objective"] == objective
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"] - 0.05
    saved = json.loads((tmp_path / "pre" / METRICS_FILE).read_text())
    assert saved["heldout_loss_after"] == metrics["heldout_loss_after"]

    adapted = load_file(str(tmp_path / "pre" / "model.safetensors"))
    original = load_file(str(tiny_backbone_dir / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(adapted[key], original[key])  # the encoder was trained
    # The tiny params pool by [CLS] + pooler: SimCSE trains the pooler the classifier reads;
    # MLM has no pooler, so the source's is kept.
    pooler_kept = torch.equal(adapted["pooler.dense.weight"], original["pooler.dense.weight"])
    assert pooler_kept == (objective == "mlm")
    model, _ = build_classifier(params, TINY_LABELS, init_dir=tmp_path / "pre")
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, adapted[key])


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_head_warmup_trains_only_the_new_head_then_unfreezes_the_encoder(tiny_params):
    params = _with(tiny_params, **{"pretrain.objective": "mlm", "pretrain.lr": 2e-3,
                                   "pretrain.encoder_lr": 2e-5})
    mlm = OBJECTIVES["mlm"](params, resolve_backbone(params.model.name_or_path))
    names = {n for n, _ in mlm.model.named_parameters()}
    head = {n for n in names if n.startswith("cls.")}
    assert head and "bert.embeddings.word_embeddings.weight" in names  # tied decoder: shared

    groups = set_phase(mlm, "head", params)
    assert _trainable(mlm.model) == head
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in
                                                            mlm.new_parameters()}
    before = {n: p.detach().clone() for n, p in mlm.model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    run_phase(mlm, groups, 3, TextSampler(_texts(), 8, gen), gen, params,
              lambda m, s: None, 0)
    after = dict(mlm.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in names - head)  # encoder untouched
    assert not torch.equal(before["cls.predictions.transform.dense.weight"],
                           after["cls.predictions.transform.dense.weight"])

    set_phase(mlm, "encoder", params)
    assert _trainable(mlm.model) == names
    frozen = _with(params, **{"pretrain.freeze_embeddings": True})
    groups = set_phase(mlm, "encoder", frozen)
    assert _trainable(mlm.model) == names - {"bert.embeddings.word_embeddings.weight"}
    assert {g["name"]: g["lr"] for g in groups} == {"head": 2e-3, "encoder": 2e-5}


def test_head_warmup_is_reported_as_its_own_phase(tiny_params, tmp_path):
    params = _with(tiny_params, **{"pretrain.objective": "mlm", "pretrain.lr": 3e-3,
                                   "pretrain.head_warmup_steps": 12, "pretrain.max_steps": 2})
    metrics = adapt_backbone(params, _texts(), tmp_path / "pre")
    assert metrics["head_warmup_steps"] == 12
    assert metrics["heldout_loss_after_head_warmup"] < metrics["heldout_loss_before"] - 0.05
    assert metrics["head_warmup_seconds"] > 0 and "heldout_loss_after" in metrics

    simcse = _with(params, **{"pretrain.objective": "simcse"})
    metrics = adapt_backbone(simcse, _texts(), tmp_path / "simcse")
    assert metrics["head_warmup_steps"] == 0  # no new head: nothing to warm up
    assert "heldout_loss_after_head_warmup" not in metrics


def test_heldout_split_and_masking_are_seeded(tiny_params, tokenizer_dir):
    from transformers import AutoTokenizer

    texts = [f"text number {i}" for i in range(50)]
    assert split_heldout(texts, 0.1, 3) == split_heldout(texts, 0.1, 3)
    train, held = split_heldout(texts, 0.1, 3)
    assert len(held) == 5 and not set(train) & set(held)
    with pytest.raises(ValueError, match="at least 2"):
        split_heldout(["only one"], 0.1, 3)

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    enc = tok(texts[:8], padding=True, return_tensors="pt")
    a = mask_tokens(enc["input_ids"], enc["attention_mask"], tok, 0.15,
                    torch.Generator().manual_seed(1))
    b = mask_tokens(enc["input_ids"], enc["attention_mask"], tok, 0.15,
                    torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    picked = a[1] != -100
    assert picked.any(dim=1).all()  # every sequence predicts at least one token
    special = torch.isin(enc["input_ids"], torch.tensor(tok.all_special_ids))
    assert not (picked & special).any() and not (picked & (enc["attention_mask"] == 0)).any()


def test_text_sampler_never_repeats_a_text_within_a_batch():
    texts = [f"t{i}" for i in range(10)]
    sampler = TextSampler(texts, 4, torch.Generator().manual_seed(0))
    for _ in range(20):
        batch = sampler.next()
        assert len(batch) == 4 and len(set(batch)) == 4


def test_cli_pretrain_disabled_writes_marker_and_finetune_needs_data(tiny_params, tmp_path):
    import yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params.model_dump(mode="json")))
    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", "--params", str(params_file)])
    assert res.exit_code == 0, res.output
    marker = json.loads((tiny_params.paths.pretrained / METRICS_FILE).read_text())
    assert marker == {"enabled": False}
    res = runner.invoke(app, ["finetune", "--params", str(params_file)])
    assert res.exit_code == 2 and "run `tuneline prepare` first" in res.output
