"""Near-duplicate texts across splits: MinHash over word 3-grams, banded LSH, exact check.

A test row that is a light edit of a training row (a template filled twice, a re-sent
message) inflates the test score as surely as an exact duplicate. Exact duplicates are
removed by `prepare`; this finds pairs whose word-shingle Jaccard similarity is at least a
threshold and reports them (a warning in report.json, not a failure: near-duplicates can be
legitimate, and grouping rows with `data.group_column` is the usual cure).

Cost is linear in the number of shingles: words are hashed once per distinct word, the
shingle hashes and the MinHash signatures are numpy array operations, and only candidate
pairs that share a whole LSH band are compared exactly.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

NUM_HASHES = 32
BANDS = 8  # 8 bands of 4 rows: pairs at Jaccard 0.8 become candidates with p > 0.99
SHINGLE = 3
MAX_EXAMPLES = 5
MAX_BUCKET = 100
_MERSENNE = np.uint64((1 << 61) - 1)


def shingles(text: str) -> set[str]:
    """Word 3-grams of a text (the whole text when it has fewer than 3 words)."""
    words = text.lower().split()
    if len(words) < SHINGLE:
        return {" ".join(words)}
    return {" ".join(words[i: i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def _shingle_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every shingle of every text, index of the text it belongs to)."""
    vocab: dict[str, int] = {}
    word_ids, owners = [], []
    for text in texts:
        word_ids.append([vocab.setdefault(w, len(vocab)) for w in text.lower().split()] or [-1])
    word_hash = np.array([zlib.crc32(w.encode()) for w in vocab] + [0], dtype=np.uint64)
    hashes = []
    for i, ids in enumerate(word_ids):
        h = word_hash[np.asarray(ids)]
        if len(h) >= SHINGLE:  # combine 3 consecutive word hashes into one 64-bit value
            h = (h[:-2] * np.uint64(0x9E3779B97F4A7C15) + h[1:-1] * np.uint64(0xC2B2AE3D27D4EB4F)
                 + h[2:])
        else:
            h = np.array([np.bitwise_xor.reduce(h * np.uint64(0x165667B19E3779F9))],
                         dtype=np.uint64)
        hashes.append(np.unique(h))
        owners.append(np.full(len(hashes[-1]), i, dtype=np.int64))
    return np.concatenate(hashes), np.concatenate(owners)


def minhash_signatures(texts: list[str], seed: int = 0) -> np.ndarray:
    """[len(texts), NUM_HASHES] MinHash signatures of the texts' shingle sets."""
    values, owners = _shingle_hashes(texts)
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 61, NUM_HASHES, dtype=np.uint64)
    b = rng.integers(0, 1 << 61, NUM_HASHES, dtype=np.uint64)
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    sig = np.empty((len(texts), NUM_HASHES), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(NUM_HASHES):
            permuted = (values * a[k] + b[k]) % _MERSENNE
            sig[:, k] = np.minimum.reduceat(permuted, starts)
    return sig


def cross_split_near_duplicates(texts_by_split: dict[str, list[str]],
                                threshold: float) -> dict[str, Any]:
    """Rows with a near-duplicate (shingle Jaccard >= threshold) in an earlier split.

    Splits are taken in the given order (train, validation, test): a validation row is
    checked against train, a test row against train and validation. Counting rows, not
    pairs, keeps the number readable when one text has many variants.

    Returns:
        {"threshold", "rows": total flagged rows, "by_splits": {"test~train": n, ...},
         "examples": up to 5 [split, text, other split, other text, jaccard]}
    """
    names = list(texts_by_split)
    texts = [t for split_texts in texts_by_split.values() for t in split_texts]
    split_of = np.repeat(np.arange(len(names)), [len(v) for v in texts_by_split.values()])
    flagged: dict[tuple[int, int], tuple[int, float]] = {}  # (row, other split) -> partner
    cache: dict[int, set[str]] = {}

    def similarity(i: int, j: int) -> float:
        a = cache.get(i) or cache.setdefault(i, shingles(texts[i]))
        b = cache.get(j) or cache.setdefault(j, shingles(texts[j]))
        return len(a & b) / len(a | b)

    for members in _candidate_buckets(texts):
        splits = split_of[members]
        if splits.min() == splits.max():
            continue
        for i, si in zip(members.tolist(), splits.tolist(), strict=True):
            for other in range(si):
                if (i, other) in flagged:
                    continue
                for j in members[splits == other].tolist():
                    score = similarity(i, j)
                    if score >= threshold:
                        flagged[(i, other)] = (j, score)
                        break
    by_splits: dict[str, int] = {}
    for i, other in flagged:
        key = f"{names[split_of[i]]}~{names[other]}"
        by_splits[key] = by_splits.get(key, 0) + 1
    top = sorted(flagged.items(), key=lambda kv: -kv[1][1])[:MAX_EXAMPLES]
    examples = [[names[split_of[i]], texts[i], names[other], texts[j], round(score, 3)]
                for (i, other), (j, score) in top]
    return {"threshold": threshold, "rows": len({i for i, _ in flagged}),
            "by_splits": dict(sorted(by_splits.items())), "examples": examples}


def _candidate_buckets(texts: list[str]):
    """Yield arrays of row indices that share one LSH band (at most MAX_BUCKET each)."""
    if len(texts) < 2:
        return
    sig = minhash_signatures(texts)
    rows = NUM_HASHES // BANDS
    for band in range(BANDS):
        keys = sig[:, band * rows:(band + 1) * rows]
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        bounds = np.r_[0, np.cumsum(counts)]
        for bucket in np.flatnonzero(counts > 1):
            # A bucket of hundreds of near-identical texts is judged by its first members;
            # comparing all of them would cost quadratic time for no news.
            yield order[bounds[bucket]: bounds[bucket + 1]][:MAX_BUCKET]
