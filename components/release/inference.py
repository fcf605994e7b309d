"""Length-bucketed inference: a batch runs as a few sub-batches of similar length.

Padding every text of a batch to its longest one wastes compute: on the demo corpus a
random batch of 32 is ~40% padding. Sorting the batch by token count and cutting it where
the extra padding would cost more than one more ONNX Runtime call recovers most of that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from components.release.predictor import BundleClassifier, Prediction, softmax


def plan_groups(sorted_lengths: list[int] | np.ndarray, call_cost_tokens: int,
                max_rows: int) -> list[slice]:
    """Cut ascending token counts into runs; a cut is made where joining the next text
    would add more padding tokens than one extra call costs, or a run reaches max_rows."""
    n = len(sorted_lengths)
    groups, start = [], 0
    for i in range(1, n):
        size = i - start
        extra_padding = size * int(sorted_lengths[i] - sorted_lengths[i - 1])
        if extra_padding > call_cost_tokens or size >= max_rows:
            groups.append(slice(start, i))
            start = i
    if n:
        groups.append(slice(start, n))
    return groups


@dataclass
class StageTimes:
    """Seconds spent per inference stage, and token counts, summed over calls."""

    tokenize: float = 0.0
    assemble: float = 0.0  # sorting, grouping and padding into ONNX Runtime feeds
    onnxruntime: float = 0.0
    tokens: int = 0
    padded_tokens: int = 0

    def add(self, **values: float) -> None:
        for key, value in values.items():
            setattr(self, key, getattr(self, key) + value)


class BucketedClassifier:
    """Same answers as `BundleClassifier.predict`, with less padding per runtime call."""

    def __init__(self, clf: BundleClassifier, call_cost_tokens: int, max_rows: int) -> None:
        from tokenizers import Tokenizer

        self.clf = clf
        self.labels = clf.labels
        self.call_cost_tokens = call_cost_tokens
        self.max_rows = max_rows
        self.pad_id = int((clf.tokenizer.padding or {}).get("pad_id", 0))
        # A copy that truncates but does not pad: each group is padded to its own length.
        self.tokenizer = Tokenizer.from_str(clf.tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(clf.max_length)

    def logits(self, texts: list[str], timings: StageTimes | None = None) -> np.ndarray:
        """Logits [len(texts), num_labels]; `timings` (if given) accumulates stage seconds."""
        t0 = time.perf_counter()
        encodings = self.tokenizer.encode_batch_fast(list(texts))  # no offsets: ~18% less CPU
        t1 = time.perf_counter()
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64,
                              count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        run = padded = 0
        for group in plan_groups(lengths[order], self.call_cost_tokens, self.max_rows):
            rows = order[group]
            feeds = self._feeds(encodings, lengths, rows)
            t2 = time.perf_counter()
            out[rows] = self.clf.run(feeds)
            run += time.perf_counter() - t2
            padded += feeds["input_ids"].size
        if timings is not None:
            timings.add(tokenize=t1 - t0, assemble=time.perf_counter() - t1 - run,
                        onnxruntime=run, tokens=int(lengths.sum()), padded_tokens=padded)
        return out

    def _feeds(self, encodings, lengths: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        """input_ids / attention_mask of `rows`, padded to the longest of them."""
        row_lengths = lengths[rows]
        width = int(row_lengths.max())
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for j, row in enumerate(rows):
            ids[j, : row_lengths[j]] = encodings[row].ids
        mask = (np.arange(width) < row_lengths[:, None]).astype(np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def probabilities(self, texts: list[str], timings: StageTimes | None = None) -> np.ndarray:
        """Class probabilities [len(texts), num_labels]."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return softmax(self.logits(texts, timings))

    def predict(self, texts: list[str]) -> list[Prediction]:
        if not texts:
            return []
        probs = self.probabilities(texts)
        best = probs.argmax(axis=1)
        return [Prediction(self.labels[b], float(row[b]),
                           dict(zip(self.labels, map(float, row), strict=True)))
                for b, row in zip(best, probs, strict=True)]
