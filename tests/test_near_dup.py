"""The scalable near-duplicate check finds the pairs an exhaustive comparison finds."""

from __future__ import annotations

import random

import numpy as np

from components.data.near_dup import (
    NearDuplicateIndex,
    _block_signatures_and_sets,
    cross_split_near_duplicates,
    jaccard,
    shingles,
)
from components.data.shingle_sets import intersection_sizes, sort_rows
from tests.conftest import tiny_rows


def _exhaustive(texts_by_split: dict[str, list[str]], threshold: float) -> dict[str, int]:
    """Every row against every row of every earlier split, by exact shingle Jaccard."""
    names = list(texts_by_split)
    by_splits: dict[str, int] = {}
    for si, name in enumerate(names):
        for other in names[:si]:
            hits = sum(any(jaccard(t, u) >= threshold for u in texts_by_split[other])
                       for t in texts_by_split[name])
            if hits:
                by_splits[f"{name}~{other}"] = hits
    return by_splits


def _corpus(seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    base = [r["text"] for r in tiny_rows(60, seed=seed)]
    words = " ".join(base).split()
    texts = []
    for t in base:  # long originals, light and heavy edits of them, and short texts
        long = t + " " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 25)))
        texts.append(long)
        for _ in range(rng.randint(0, 3)):
            w = long.split()
            for _ in range(rng.choice([1, 1, 2, 4, 8])):
                w[rng.randrange(len(w))] = rng.choice(words)
            texts.append(" ".join(w))
    texts += ["short text", "Short   TEXT", "one", "one"]
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for t in texts:
        splits[rng.choice(["train", "train", "train", "validation", "test"])].append(t)
    return splits


def test_finds_the_same_cross_split_pairs_as_an_exhaustive_comparison():
    for seed in range(3):
        splits = _corpus(seed)
        for threshold in (0.8, 0.9):  # banding is tuned for 0.8 (see BANDS)
            found = cross_split_near_duplicates(splits, threshold)
            expected = _exhaustive(splits, threshold)
            # No false positives; banding misses a pair at exactly the threshold with
            # p = (1 - 0.8**4)**8 = 1.5%, and fewer the more similar it is.
            assert set(found["by_splits"]) <= set(expected)
            missed = {k: n - found["by_splits"].get(k, 0) for k, n in expected.items()}
            assert all(m >= 0 for m in missed.values()), (seed, threshold, missed)
            assert sum(missed.values()) <= max(1, 0.03 * sum(expected.values()))
            assert found["rows"] > 0
            for split_a, a, split_b, b, score in found["examples"]:
                assert split_a != split_b and score == round(jaccard(a, b), 3) >= threshold


def test_rows_left_out_and_blocks_added_one_by_one():
    splits = _corpus(1)
    texts = [t for v in splits.values() for t in v]
    split_of = np.repeat(np.arange(3), [len(v) for v in splits.values()])
    index = NearDuplicateIndex(list(splits))
    for lo in range(0, len(texts), 7):  # blocks of 7 rows give the same signatures
        index.add(texts[lo: lo + 7], split_of[lo: lo + 7])
    assert index.report(0.8, texts.__getitem__) == cross_split_near_duplicates(splits, 0.8)
    keep = split_of != 1  # without validation rows: only test~train remains
    report = index.report(0.8, texts.__getitem__, keep)
    assert set(report["by_splits"]) <= {"test~train"}
    assert report["by_splits"]["test~train"] == index.report(0.8, texts.__getitem__)[
        "by_splits"]["test~train"]


def test_vectorised_exact_jaccard_equals_the_set_definition_on_every_pair():
    """The exact check (sorted shingle hashes, batched binary search) gives the Jaccard of
    `shingles` for every pair of a corpus with edits, repeats, short and odd texts."""
    splits = _corpus(2)
    texts = [t for v in splits.values() for t in v]
    texts += ["", "   ", "a a a a a a", "a a a a b", "b a", "a b", "ΟΔΟΣ οδοσ", "İx y z",
              "x\u3000y\x1cz w", "the cat the cat the cat"]
    _, values, offsets = _block_signatures_and_sets(texts)
    n = len(texts)
    distinct = np.diff(offsets)
    sort_rows(values, offsets, np.arange(n), distinct)
    a, b = (x.ravel() for x in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
    common = intersection_sizes(values, offsets, a, b)
    union = distinct[a] + distinct[b] - common
    got = common / union
    want = np.array([jaccard(texts[i], texts[j]) for i, j in zip(a, b, strict=True)])
    assert np.array_equal(got, want)
    assert distinct.tolist() == [len(shingles(t)) for t in texts]


def test_sort_rows_resorts_rows_whose_shingles_share_a_sort_key():
    """Values equal in their top 49 bits tie in the one-key sort; those rows are re-sorted
    exactly; repeats stay but are counted once; rows not asked for are left as they are."""
    base = np.uint64(7 << 40)
    values = np.array([base + np.uint64(5), base + np.uint64(1), base + np.uint64(5), 3,
                       base + np.uint64(2), 9, 9, 1, 8, 4], dtype=np.uint64)
    offsets = np.array([0, 5, 8, 10])
    distinct = np.diff(offsets)
    sort_rows(values, offsets, np.array([0, 1]), distinct)
    b = int(base)
    assert values.tolist() == [3, b + 1, b + 2, b + 5, b + 5, 1, 9, 9, 8, 4]
    assert distinct.tolist() == [4, 2, 2]
    # row 0 against row 1 and itself: repeats count once
    common = intersection_sizes(values, offsets, np.array([0, 1, 1]), np.array([0, 1, 0]))
    assert common.tolist() == [4, 2, 0]


def test_arrow_splits_words_where_python_does():
    """The shingles' words: str.split's whitespace equals Arrow's utf8_split_whitespace."""
    import pyarrow as pa
    import pyarrow.compute as pc

    points = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    texts = ["a" + chr(c) + "b" for c in points]
    split = pc.utf8_split_whitespace(pa.array(texts)).to_pylist()
    assert split == [t.split() for t in texts]
