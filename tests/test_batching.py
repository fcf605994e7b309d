"""Batching: the length-sorted shuffle and length-sorted evaluation batches."""

from __future__ import annotations

import random

import torch

from components.model.encoding import Encoded
from components.train.finetune.batching import ShuffledLoader, sequential_batches


def _data(n: int = 203, seed: int = 0) -> Encoded:
    """Rows of random length 1..60; the token ids encode the row number, the label too."""
    rng = random.Random(seed)
    ids = [[row + 1] * rng.randint(1, 60) for row in range(n)]
    return Encoded(input_ids=ids, labels=list(range(n)), pad_id=0)


def _epoch(loader: ShuffledLoader) -> list[dict]:
    n_batches = len(loader.data) // loader.batch_size
    return [loader.next_batch() for _ in range(n_batches)]


def test_sorted_window_shuffle_serves_each_row_once_with_less_padding():
    data = _data()
    plain, grouped = ShuffledLoader(data, 8, seed=1), ShuffledLoader(data, 8, 1, sort_window=5)
    plain_batches, grouped_batches = _epoch(plain), _epoch(grouped)
    rows = [int(r) for b in grouped_batches for r in b["labels"]]
    assert len(rows) == len(set(rows)) == (len(data) // 8) * 8
    assert all(len(b["labels"]) == 8 for b in grouped_batches)

    def padded(batches):
        return sum(b["input_ids"].numel() for b in batches)

    assert padded(grouped_batches) < 0.7 * padded(plain_batches)
    # The batches are not simply in length order: the sorted batches are shuffled again.
    widths = [b["input_ids"].shape[1] for b in grouped_batches]
    assert widths != sorted(widths)


def test_sorted_window_shuffle_resumes_the_same_batches():
    data = _data()
    a = ShuffledLoader(data, 8, seed=3, sort_window=4)
    for _ in range(30):  # crosses an epoch boundary (25 batches per epoch)
        a.next_batch()
    b = ShuffledLoader(data, 8, seed=3, sort_window=4)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        assert torch.equal(a.next_batch()["input_ids"], b.next_batch()["input_ids"])


def test_length_sorted_evaluation_batches_hold_the_same_rows():
    data = _data(50)
    for max_batches in (0, 3):
        plain = list(sequential_batches(data, 8, max_batches))
        by_length = list(sequential_batches(data, 8, max_batches, by_length=True))
        rows = sorted(int(r) for b in by_length for r in b["labels"])
        assert rows == [int(r) for b in plain for r in b["labels"]]
        # Each row's ids stay with its label (the ids encode the row number).
        for batch in by_length:
            assert torch.equal(batch["input_ids"][:, 0], batch["labels"] + 1)
    assert sum(b["input_ids"].numel() for b in by_length) < sum(
        b["input_ids"].numel() for b in plain)
