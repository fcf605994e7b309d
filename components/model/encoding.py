"""Token ids for the model: texts (or tagged sentences) tokenized once, padded per batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Encoded:
    """Token ids of every example (unpadded) and their class ids.

    Token classification: an example is a window of a sentence and its label a list, one
    tag id per token (-100 where no tag is scored: special tokens, non-first sub-tokens).

    `targets`, when set, are a teacher's logits for each example (distillation); a label
    of -1 then marks a row with no gold label (unlabeled text, soft targets only).
    `hidden_targets`, when set, are the teacher's mean-pooled hidden states at the layers
    the student's layers are mapped to, [examples, student layers, hidden size].
    """

    input_ids: list[list[int]]
    labels: list[int] | list[list[int]]
    pad_id: int
    targets: Any = None         # a torch.Tensor
    hidden_targets: Any = None  # a torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer: Any, texts: list[str], labels: list[int], max_length: int) -> Encoded:
    """Tokenize all texts once (truncated to `max_length`); padding happens per batch."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(input_ids=[list(x) for x in ids], labels=list(labels), pad_id=pad)

