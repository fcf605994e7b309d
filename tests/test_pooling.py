"""`model.pooling: mean`: the head reads the masked mean of the tokens; reload, PEFT,
training and ONNX export behave exactly as with the [CLS] pooler. Also
`finetune.freeze_embeddings`, the other knob of the demo's default fine-tune."""

from __future__ import annotations

import pytest
import torch

from components.model.modeling import build_classifier, load_trained, save_trained
from components.model.pooling import classifier_class, masked_mean
from tests.conftest import TINY_LABELS
from tests.test_modeling import _with

TEXTS = ["stock market rally", "rain and cold wind tonight over the hills"]


def _mean(params, **updates):
    return _with(params, **{"model.pooling": "mean", **updates})


def test_masked_mean_ignores_padded_positions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(masked_mean(hidden, torch.tensor([[1, 1, 0]])),
                       torch.tensor([[2.0, 3.0]]))


def test_mean_pooling_drops_the_pooler_and_ignores_padding(tiny_params):
    cls_model, _ = build_classifier(tiny_params, TINY_LABELS)
    model, tokenizer = build_classifier(_mean(tiny_params), TINY_LABELS)
    assert model.bert.pooler is None and cls_model.bert.pooler is not None
    assert not any("pooler" in name for name in model.state_dict())
    model.eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    alone = tokenizer(TEXTS[:1], return_tensors="pt")
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]  # row 0 is padded
    with torch.inference_mode():
        padded = model(**batch).logits[0]
        single = model(**alone).logits[0]
    assert torch.allclose(padded, single, atol=1e-5)
    # Same seed, same head init: only the pooled vector differs between the two choices.
    assert torch.equal(model.classifier.weight, cls_model.classifier.weight)


def test_folder_without_pooling_in_its_meta_reloads_as_cls(tiny_params, tmp_path):
    import json

    model, tokenizer = build_classifier(tiny_params, TINY_LABELS)
    save_trained(model, tokenizer, TINY_LABELS, tiny_params, tmp_path / "m")
    meta_path = tmp_path / "m" / "tuneline_model.json"
    meta = json.loads(meta_path.read_text())
    del meta["pooling"]
    meta_path.write_text(json.dumps(meta))
    assert load_trained(tmp_path / "m").model.bert.pooler is not None


def test_unknown_pooling_is_refused(tiny_params):
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="model.pooling"):
        _mean(tiny_params, **{"model.pooling": "max"})
    model, _ = build_classifier(tiny_params, TINY_LABELS)
    with pytest.raises(ValueError, match="unknown pooling"):
        classifier_class(model.config, "max")


def test_mean_pooled_training_lowers_loss_and_exports_with_fp32_parity(
        tiny_params, tiny_prepared, tmp_path):
    from components.release.export import export_model
    from components.train.finetune import train

    params = _mean(tiny_params, **{"export.latency_repeats": 2})
    metrics = train(params, tiny_prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    assert metrics["train_loss_final"] < 0.8 * metrics["train_loss_initial"]
    trained = load_trained(tmp_path / "model")
    result = export_model(trained.model, trained.tokenizer, TINY_LABELS, tmp_path / "bundle",
                          params, texts=TEXTS + ["goal", "a b c d e f g"], y_true=[2, 1, 0, 0],
                          meta={"max_length": 32})
    assert result["max_logit_diff"] <= params.gate.max_logit_diff


def test_frozen_embeddings_stay_as_pretrained_and_the_rest_trains(
        tiny_params, tiny_prepared, tmp_path):
    from components.model.modeling import trainable_parameters
    from components.train.finetune import train

    params = _mean(tiny_params, **{"finetune.freeze_embeddings": True})
    start, _ = build_classifier(params, TINY_LABELS)
    names = [n for n, _ in trainable_parameters(start)]
    assert "bert.embeddings.word_embeddings.weight" not in names and names
    train(params, tiny_prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    trained = load_trained(tmp_path / "model").model
    assert torch.equal(trained.bert.embeddings.word_embeddings.weight,
                       start.bert.embeddings.word_embeddings.weight)
    assert not torch.equal(trained.classifier.weight, start.classifier.weight)
