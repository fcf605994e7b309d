"""How the classification head sees a text: the [CLS] pooler, or the masked mean of tokens.

`model.pooling: cls` is transformers' own `*ForSequenceClassification`: the head reads the
first token through the backbone's pooler (dense + tanh). `mean` keeps that class's layers
(dropout + classifier) but feeds them the mean of the last hidden states over the real
tokens, and drops the pooler. Sentence encoders such as all-MiniLM-L6-v2 were trained with
exactly that mean as their sentence vector, so a head on it starts from features that
already separate topics, while their [CLS] pooler was never trained for anything.

The mean-pooled model is a subclass of the architecture's own class (only `forward` differs),
so from_pretrained, peft wrapping, safetensors save/load and ONNX export work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("cls", "mean")
_MEAN_CLASSES: dict[type, type] = {}


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (batch x seq x dim) over the positions where the mask is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def classifier_class(config: Any, pooling: str) -> type:
    """The module class for a backbone `config` and a `model.pooling` choice.

    Raises:
        ValueError: unknown pooling, or `mean` on an architecture whose head is not
            dropout + one linear classifier (BERT-style heads are).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    if pooling not in POOLINGS:
        raise ValueError(f"model.pooling: unknown pooling {pooling!r} (one of {POOLINGS})")
    base = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    if pooling == "cls":
        return base
    if base not in _MEAN_CLASSES:
        _MEAN_CLASSES[base] = type(f"MeanPooled{base.__name__}", (base,),
                                   {"forward": _mean_pooled_forward, "__module__": __name__})
    return _MEAN_CLASSES[base]


def finish_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Complete a freshly built model of `classifier_class(config, pooling)` (in place).

    cls: nothing to do. mean: check the head and drop the unused pooler.
    """
    if pooling != "mean":
        return model
    backbone = getattr(model, model.base_model_prefix)
    head = getattr(model, "classifier", None)
    if not (isinstance(head, nn.Linear) and isinstance(getattr(model, "dropout", None),
                                                       nn.Dropout)
            and head.in_features == model.config.hidden_size):
        raise ValueError(f"model.pooling=mean needs a dropout + linear classifier head; "
                         f"{type(model).__mro__[1].__name__} has another head (use cls)")
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # unused by the mean head; keeping it would only add weights
    return model


def _mean_pooled_forward(self: nn.Module, input_ids: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None,
                         labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
    from transformers.modeling_outputs import SequenceClassifierOutput

    kwargs.pop("return_dict", None)
    # peft passes every optional input (token_type_ids=None, ...); some backbones take fewer.
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    out = getattr(self, self.base_model_prefix)(input_ids=input_ids,
                                                attention_mask=attention_mask,
                                                return_dict=True, **kwargs)
    hidden = out.last_hidden_state
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    logits = self.classifier(self.dropout(masked_mean(hidden, attention_mask)))
    loss = F.cross_entropy(logits, labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                    attentions=out.attentions)
