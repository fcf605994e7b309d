"""What every pretraining objective shares: the registry, the held-out split, saving.

An objective (mlm.py, simcse.py) owns a model built from the backbone and answers four
questions: how to make a training batch from texts, what its loss on a batch is, which of
its parameters are new (a freshly initialised head, trained alone before the encoder moves),
and which module is the encoder that becomes the adapted backbone. The loop (loop.py) does
the rest: phases, optimizer, schedule, held-out measurements.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from components.config import Params
from components.io import atomic_dir, atomic_write_json

Batch = dict[str, torch.Tensor]
METRICS_FILE = "pretrain_metrics.json"
OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make `cls` selectable as `pretrain.objective: <cls.name>`."""
    if cls.name in OBJECTIVES:
        raise ValueError(f"pretraining objective {cls.name!r} is already registered")
    OBJECTIVES[cls.name] = cls
    return cls


class Objective:
    """One way to adapt the backbone with unlabeled text (subclasses register by name).

    Attributes:
        model: the module being trained (encoder, plus a head for objectives that need one).
        tokenizer: the backbone's tokenizer.
    """

    name: ClassVar[str]

    def __init__(self, params: Params, source: str) -> None:
        from transformers import AutoTokenizer

        self.params = params
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = self.build_model(source)

    def build_model(self, source: str) -> nn.Module:
        raise NotImplementedError

    @property
    def encoder(self) -> nn.Module:
        """The part saved as the adapted backbone (the transformers base model)."""
        return getattr(self.model, self.model.base_model_prefix)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters the backbone did not have (a new head); shared ones excluded."""
        return []

    def make_batch(self, texts: list[str], gen: torch.Generator) -> Batch:
        raise NotImplementedError

    def loss(self, batch: Batch, train_encoder: bool = True) -> torch.Tensor:
        """Mean loss on `batch`; with `train_encoder` False the encoder runs without autograd."""
        raise NotImplementedError

    def heldout_loss(self, batches: list[Batch]) -> float:
        """Mean loss over fixed held-out batches, deterministic for the same weights."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> Batch:
        enc = self.tokenizer(texts, truncation=True, max_length=self.params.model.max_length,
                             padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def hidden_states(self, batch: Batch, train_encoder: bool) -> torch.Tensor:
        """Last hidden states of the encoder (batch x seq x hidden)."""
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            return self.encoder(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded (train, heldout) split of the unlabeled texts; both sides are non-empty."""
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise ValueError(f"pretraining needs at least 2 non-empty texts, got {len(texts)}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = min(len(texts) - 1, max(1, round(fraction * len(texts))))
    return [texts[i] for i in order[n_held:]], [texts[i] for i in order[:n_held]]


def save_backbone(encoder: nn.Module, tokenizer: Any, source: str, out_dir: str | Path,
                  metrics: dict[str, Any]) -> Path:
    """Save the adapted encoder as a plain backbone folder, keeping the source's pooler.

    An MLM model has no pooler, but a [CLS]-pooled classifier uses it; so the source
    backbone is loaded whole and only the weights the objective trained are copied in.
    """
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(source)
    missing, unexpected = backbone.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"adapted encoder does not match the backbone: missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]}")
    with atomic_dir(out_dir) as tmp:
        backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / METRICS_FILE, metrics)
    return Path(out_dir)
