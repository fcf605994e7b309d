"""Masked-LM continued pretraining (`pretrain.objective: mlm`).

The vocabulary projection is applied only at the masked positions: predicting the other
85% of tokens would be thrown away by the loss anyway, and the 30k-wide projection of
every token costs as much as a third of the encoder's forward pass.

A sentence encoder such as all-MiniLM-L6-v2 ships without an MLM head, so the head is new
and random (its first loss is above a uniform guess over the vocabulary). Its parameters
are `new_parameters()`: the loop trains them alone first (`pretrain.head_warmup_steps`) so
the encoder is not pushed around by a head that knows nothing yet.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components.train.pretrain.base import Batch, Objective, register_objective


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer: Any,
                probability: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of the real tokens; 80% [MASK], 10% random, 10% kept.

    Returns (masked input ids, labels with -100 on tokens that are not predicted).
    """
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids))
    candidates = attention_mask.bool() & ~special
    chosen = (torch.rand(input_ids.shape, generator=gen) < probability) & candidates
    # Guarantee at least one prediction per sequence with a real token, else its loss is void.
    for row in range(input_ids.shape[0]):
        if not chosen[row].any() and candidates[row].any():
            idx = candidates[row].nonzero().flatten()
            chosen[row, idx[torch.randint(len(idx), (1,), generator=gen)]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    masked = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=gen)
    masked[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(len(tokenizer), (int(swap.sum()),), generator=gen)
    return masked, labels


@register_objective
class MaskedLM(Objective):
    """Predict masked tokens; the head is the architecture's own MLM head."""

    name = "mlm"

    def build_model(self, source: str) -> nn.Module:
        from transformers import AutoModelForMaskedLM

        model = AutoModelForMaskedLM.from_pretrained(source)
        heads = [m for n, m in model.named_children() if n != model.base_model_prefix]
        # One head module (BERT's `cls`, RoBERTa's `lm_head`): it can run on the masked
        # positions alone. Otherwise fall back to the model's own (full-width) forward.
        self.head = heads[0] if len(heads) == 1 else None
        return model

    def new_parameters(self) -> list[nn.Parameter]:
        # The decoder weight is tied to the word embeddings: it belongs to the encoder.
        shared = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.model.parameters() if id(p) not in shared]

    def make_batch(self, texts: list[str], gen: torch.Generator) -> Batch:
        batch = self.tokenize(texts)
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"], batch["attention_mask"], self.tokenizer,
            self.params.pretrain.mlm.probability, gen)
        return batch

    def loss(self, batch: Batch, train_encoder: bool = True) -> torch.Tensor:
        if self.head is None:
            return self.model(**batch).loss
        picked = batch["labels"] != -100
        hidden = self.hidden_states(batch, train_encoder)
        return F.cross_entropy(self.head(hidden[picked]), batch["labels"][picked])

    def heldout_loss(self, batches: list[Batch]) -> float:
        """Token-weighted mean loss over fixed, pre-masked batches (eval mode)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for b in batches:
                n = int((b["labels"] != -100).sum())
                total += float(self.loss(b)) * n
                count += n
        self.model.train(was_training)
        return total / max(count, 1)
