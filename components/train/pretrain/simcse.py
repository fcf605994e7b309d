"""Unsupervised SimCSE (`pretrain.objective: simcse`), for sentence encoders.

Each text is encoded twice; the two views differ only by dropout and are each other's
positive, every other text of the batch is a negative (Gao et al., 2021). The sentence
vector is the one the classifier's head will read (`model.pooling`), so the objective
shapes exactly the features fine-tuning starts from. No new parameters: nothing to warm up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.model.pooling import masked_mean
from components.train.pretrain.base import Batch, Objective, register_objective


@register_objective
class SimCSE(Objective):
    """Dropout views as positives, in-batch negatives, cosine similarity / temperature."""

    name = "simcse"

    def build_model(self, source: str) -> nn.Module:
        from transformers import AutoModel

        return AutoModel.from_pretrained(source)

    @property
    def encoder(self) -> nn.Module:
        return self.model

    def make_batch(self, texts: list[str], gen: torch.Generator) -> Batch:
        return self.tokenize(texts)

    def embed(self, batch: Batch, train_encoder: bool = True) -> torch.Tensor:
        """Sentence vectors as the classifier pools them: token mean, or the [CLS] pooler."""
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            out = self.model(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"])
        if self.params.model.pooling == "mean":
            return masked_mean(out.last_hidden_state, batch["attention_mask"])
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    def loss(self, batch: Batch, train_encoder: bool = True) -> torch.Tensor:
        n = batch["input_ids"].shape[0]
        # One forward over the batch stacked on itself: each row gets its own dropout mask.
        doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
        z = F.normalize(self.embed(doubled, train_encoder), dim=-1)
        logits = z[:n] @ z[n:].T / self.params.pretrain.simcse.temperature
        return F.cross_entropy(logits, torch.arange(n))

    def heldout_loss(self, batches: list[Batch]) -> float:
        """Mean loss with dropout on (it makes the views) under a fixed seed: the same
        weights give the same number, and the caller's random state is left untouched."""
        was_training = self.model.training
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(self.params.pretrain.seed)
            self.model.train()
            for b in batches:
                n = b["input_ids"].shape[0]
                total += float(self.loss(b)) * n
                count += n
        self.model.train(was_training)
        return total / max(count, 1)
