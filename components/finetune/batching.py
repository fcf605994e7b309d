"""Tokenize once, then serve batches from a resumable, seeded shuffle.

The loader's whole position is (epoch, cursor): each epoch's order is a permutation drawn
from a generator seeded by (seed, epoch), so a resumed run sees exactly the batches the
uninterrupted run would have seen, without storing the order itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

Batch = dict[str, torch.Tensor]


@dataclass
class Encoded:
    """Token ids of every example (unpadded) and their class ids."""

    input_ids: list[list[int]]
    labels: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer: Any, texts: list[str], labels: list[int], max_length: int) -> Encoded:
    """Tokenize all texts once (truncated to `max_length`); padding happens per batch."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(input_ids=[list(x) for x in ids], labels=list(labels), pad_id=pad)


def collate(data: Encoded, indices: list[int]) -> Batch:
    """Pad the chosen examples to the longest of them (dynamic padding keeps steps cheap)."""
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        seq = data.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    labels = torch.tensor([data.labels[i] for i in indices], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ShuffledLoader:
    """Endless seeded batches over `data`; an epoch's tail shorter than a batch is skipped."""

    def __init__(self, data: Encoded, batch_size: int, seed: int) -> None:
        if len(data) == 0:
            raise ValueError("the training split is empty")
        self.data = data
        self.batch_size = min(batch_size, len(data))
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data), generator=gen).tolist()

    def next_batch(self) -> Batch:
        if self.cursor + self.batch_size > len(self.data):
            self.epoch += 1
            self.cursor = 0
            self._order = self._permutation(self.epoch)
        idx = self._order[self.cursor: self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return collate(self.data, idx)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)


def sequential_batches(data: Encoded, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
    """Batches in file order (for evaluation and feature extraction); 0 = all."""
    for n, start in enumerate(range(0, len(data), batch_size)):
        if max_batches and n >= max_batches:
            return
        yield collate(data, list(range(start, min(start + batch_size, len(data)))))
