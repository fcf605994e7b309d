"""Tokenize once, then serve batches from a resumable, seeded shuffle.

The loader's whole position is (epoch, cursor): each epoch's order is a permutation drawn
from a generator seeded by (seed, epoch), so a resumed run sees exactly the batches the
uninterrupted run would have seen, without storing the order itself.

A batch is padded to its longest member, so one long text makes the whole batch pay for
its length. With `sort_window` > 0 the shuffled order is cut into windows of that many
batches, each window sorted by length and cut into batches, and the batches shuffled
again: batches hold texts of similar length (far less padding; on the demo corpus a step
costs about what the mean length costs, not the longest) while every window still mixes
the whole training set.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from components.model.encoding import Encoded

Batch = dict[str, torch.Tensor]


def collate(data: Encoded, indices: list[int]) -> Batch:
    """Pad the chosen examples to the longest of them (dynamic padding keeps steps cheap)."""
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        seq = data.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    if data.labels and isinstance(data.labels[0], list):  # per-token tags, padded unscored
        labels = torch.full((len(indices), width), -100, dtype=torch.long)
        for row, i in enumerate(indices):
            labels[row, : len(data.labels[i])] = torch.tensor(data.labels[i], dtype=torch.long)
    else:
        labels = torch.tensor([data.labels[i] for i in indices], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if data.targets is not None:
        batch["teacher_logits"] = data.targets[indices]
    if data.hidden_targets is not None:
        batch["teacher_hidden"] = data.hidden_targets[indices]
    return batch


class ShuffledLoader:
    """Endless seeded batches over `data`; an epoch's tail shorter than a batch is skipped."""

    def __init__(self, data: Encoded, batch_size: int, seed: int, sort_window: int = 0) -> None:
        if len(data) == 0:
            raise ValueError("the training split is empty")
        self.data = data
        self.batch_size = min(batch_size, len(data))
        self.seed = seed
        self.sort_window = sort_window
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.data), generator=gen).tolist()
        if not self.sort_window:
            return order
        size, window = self.batch_size, self.batch_size * self.sort_window
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start: start + window], key=lambda i: len(self.data.input_ids[i]))
            batches += [chunk[j: j + size] for j in range(0, len(chunk), size)]
        # Windows are whole batches, so only the very last batch can be short; it stays
        # last (next_batch skips a short tail) and the full ones are shuffled.
        full = [b for b in batches if len(b) == size]
        tail = [i for b in batches if len(b) < size for i in b]
        picks = torch.randperm(len(full), generator=gen).tolist()
        return [i for k in picks for i in full[k]] + tail

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


def sequential_batches(data: Encoded, batch_size: int, max_batches: int = 0,
                       by_length: bool = False) -> Iterator[Batch]:
    """The first `max_batches` batches in file order (0 = all), for evaluation and features.

    `by_length` serves the same examples sorted by length (least padding) instead; only
    for callers that do not care about the row order (aggregate metrics, feature + label).
    """
    end = min(len(data), max_batches * batch_size) if max_batches else len(data)
    rows = list(range(end))
    if by_length:
        rows.sort(key=lambda i: len(data.input_ids[i]))
    for start in range(0, end, batch_size):
        yield collate(data, rows[start: start + batch_size])
