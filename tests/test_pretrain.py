"""Masked-LM pretraining lowers held-out loss and yields a backbone the classifier accepts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from components.modeling import build_classifier
from components.pretrain import METRICS_FILE, mask_tokens, pretrain_mlm, split_heldout
from pipelines.cli import app
from tests.conftest import TINY_LABELS, tiny_rows
from tests.test_modeling import _with


def test_mlm_pretraining_lowers_heldout_loss(tiny_params, tiny_backbone_dir, tmp_path):
    params = _with(tiny_params, **{"pretrain.enabled": True, "pretrain.max_steps": 15,
                                   "pretrain.lr": 2e-3})
    texts = [r["text"] for r in tiny_rows(30, seed=5)]
    metrics = pretrain_mlm(params, texts, tmp_path / "pre")
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"] - 0.05
    assert metrics["perplexity_after"] < metrics["perplexity_before"]
    saved = json.loads((tmp_path / "pre" / METRICS_FILE).read_text())
    assert saved["heldout_loss_after"] == metrics["heldout_loss_after"]

    adapted = load_file(str(tmp_path / "pre" / "model.safetensors"))
    original = load_file(str(tiny_backbone_dir / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(adapted[key], original[key])  # the encoder was trained
    assert torch.equal(adapted["pooler.dense.weight"], original["pooler.dense.weight"])
    model, _ = build_classifier(params, TINY_LABELS, init_dir=tmp_path / "pre")
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, adapted[key])


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
