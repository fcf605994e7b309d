"""Backbone resolution, PEFT wrapping and the safetensors model folder round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.model.modeling import (
    META_FILE,
    UnsupportedPeftError,
    build_classifier,
    load_trained,
    resolve_backbone,
    save_trained,
)
from components.model.unwrap import merge_for_export
from tests.conftest import TINY_LABELS

METHODS = ["none", "lora", "ia3", "prompt_tuning"]


def _with(params, **updates):
    """Copy of params with dotted-key updates, validated like the YAML would be."""
    from components.config import apply_overrides, validate_params

    raw = params.model_dump(mode="json")
    return validate_params(apply_overrides(raw, [f"{k}={v}" for k, v in updates.items()]))


def _logits(model, tokenizer) -> torch.Tensor:
    enc = tokenizer(["stock market rally", "rain and cold wind tonight"], padding=True,
                    return_tensors="pt")
    with torch.inference_mode():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def test_resolve_packaged_backbone_is_a_hf_folder():
    folder = Path(resolve_backbone("packaged:all-MiniLM-L6-v2"))
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()


def test_resolve_local_folder_and_errors(tiny_backbone_dir, tmp_path):
    assert resolve_backbone(str(tiny_backbone_dir)) == str(tiny_backbone_dir)
    with pytest.raises(ValueError, match="unknown packaged model"):
        resolve_backbone("packaged:no-such-model")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_backbone(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no config.json"):
        resolve_backbone(str(tmp_path))
    assert resolve_backbone("org/some-model") == "org/some-model"  # hub id passes through


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("method", METHODS)
def test_saved_model_reloads_to_identical_logits(tiny_params, tmp_path, method, pooling):
    params = _with(tiny_params, **{"peft.method": method, "model.pooling": pooling})
    model, tokenizer = build_classifier(params, TINY_LABELS)
    model.eval()
    with torch.no_grad():  # move trainable weights off their init so the check means something
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    before = _logits(model, tokenizer)
    save_trained(model, tokenizer, TINY_LABELS, params, tmp_path / "m")
    reloaded = load_trained(tmp_path / "m")
    assert torch.equal(_logits(reloaded.model, reloaded.tokenizer), before)
    assert reloaded.labels == TINY_LABELS and not reloaded.model.training
    meta = reloaded.meta
    assert meta["peft_method"] == method and meta["params_hash"] == params.hash()
    assert meta["pooling"] == pooling
    assert (meta["peft_config"] is None) == (method == "none")
    files = {p.suffix for p in (tmp_path / "m").iterdir()}
    assert ".safetensors" in files and not files & {".bin", ".pt", ".pkl", ".pth"}


def test_peft_trains_only_a_small_part(tiny_params):
    full, _ = build_classifier(tiny_params, TINY_LABELS)
    lora, _ = build_classifier(_with(tiny_params, **{"peft.method": "lora"}), TINY_LABELS)
    n_full = sum(p.numel() for p in full.parameters() if p.requires_grad)
    n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert n_lora < 0.01 * n_full
    assert any("classifier" in n for n, p in lora.named_parameters() if p.requires_grad)


def test_head_init_is_seeded(tiny_params):
    a, _ = build_classifier(tiny_params, TINY_LABELS)
    b, _ = build_classifier(tiny_params, TINY_LABELS)
    assert torch.equal(a.classifier.weight, b.classifier.weight)


def test_prefix_tuning_unsupported_on_bert_says_why(tiny_params):
    params = _with(tiny_params, **{"peft.method": "prefix_tuning"})
    with pytest.raises(UnsupportedPeftError, match="prefix_tuning is not supported"):
        build_classifier(params, TINY_LABELS)


def test_merge_for_export_keeps_logits(tiny_params):
    params = _with(tiny_params, **{"peft.method": "lora"})
    model, tokenizer = build_classifier(params, TINY_LABELS)
    model.eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    before = _logits(model, tokenizer)
    merged = merge_for_export(model)
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(_logits(merged, tokenizer), before, atol=1e-5, rtol=1e-5)


def test_load_trained_rejects_a_non_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_trained(tmp_path)


def test_needs_two_labels(tiny_params):
    with pytest.raises(ValueError, match="at least 2 labels"):
        build_classifier(tiny_params, ["only"])
