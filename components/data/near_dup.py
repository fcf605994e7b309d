"""Near-duplicate texts across splits: MinHash over word 3-grams, banded LSH, exact check.

A test row that is a light edit of a training row (a template filled twice, a re-sent
message) inflates the test score as surely as an exact duplicate. Exact duplicates are
removed by `prepare`; this finds rows whose word-shingle Jaccard similarity with a row of
an earlier split is at least a threshold and reports them (a warning in report.json, not a
failure: near-duplicates can be legitimate, and `data.group_column` is the usual cure).

Built to run on millions of rows in bounded memory:
- shingling is vectorised: Arrow splits and dictionary-encodes the words of a block of
  texts, numpy combines three consecutive word hashes into a shingle hash;
- a text's MinHash signature is NUM_HASHES 32-bit minima (multiply-shift hashes of its
  shingle hashes), 128 bytes a row, whatever its length;
- LSH: rows sharing one band (ROWS_PER_BAND minima) in different splits are candidates;
  a row is compared with at most MAX_PARTNERS rows of an earlier split per band, pairs
  whose signatures agree on fewer than (threshold - SIGNATURE_MARGIN) of the hashes are
  dropped, and the rest are confirmed with the exact shingle Jaccard, best first.
Recall is that of the banding (a pair at Jaccard 0.8 shares a band with p > 0.99); every
reported pair is exact (no false positives).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

NUM_HASHES = 32
BANDS = 8  # 8 bands of 4 rows: pairs at Jaccard 0.8 become candidates with p > 0.99
ROWS_PER_BAND = NUM_HASHES // BANDS
SHINGLE = 3
MAX_EXAMPLES = 5
# A row meets at most this many rows of each earlier split per band: a band shared by
# hundreds of variants of one template is judged by its first members, not all pairs.
MAX_PARTNERS = 16
# Signatures estimate Jaccard with a standard error of ~0.07 at 0.8; a pair estimated more
# than this below the threshold is not checked exactly.
SIGNATURE_MARGIN = 0.25
EXACT_TRIES = 3  # exact comparisons per (row, earlier split) and band, best estimate first
BLOCK = 32768  # texts shingled at once: bounds the temporary arrays
_U64 = np.uint64
_SEED = 0


def shingles(text: str) -> set[tuple[str, ...]]:
    """Word 3-grams of a text (the whole text when it has fewer than 3 words)."""
    words = text.lower().split()
    if len(words) < SHINGLE:
        return {tuple(words)}
    return set(zip(words, words[1:], words[2:], strict=False))


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def _hash_params() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    a = rng.integers(1, 1 << 63, NUM_HASHES, dtype=np.uint64) | _U64(1)  # odd multipliers
    b = rng.integers(0, 1 << 63, NUM_HASHES, dtype=np.uint64)
    return a, b


_A, _B = _hash_params()


def _shingle_block(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes of a block of texts, start offset of each text's run; n + 1 long)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(pc.utf8_lower(
        pa.array(texts, type=pa.large_string()))))
    offsets = words.offsets.to_numpy().astype(np.int64)
    coded = pc.dictionary_encode(words.values)
    vocab = coded.dictionary.to_pylist()
    word_hash = np.fromiter((zlib.crc32(w.encode()) for w in vocab), dtype=np.uint64,
                            count=len(vocab))
    h = word_hash[coded.indices.to_numpy()]
    lengths = np.diff(offsets)
    with np.errstate(over="ignore"):
        # Shingle starting at word p: mix of words p, p+1, p+2 (valid when p+2 is in its text).
        tri = h[:-2] * _U64(0x9E3779B97F4A7C15) + h[1:-1] * _U64(0xC2B2AE3D27D4EB4F) + h[2:]
        short = h * _U64(0x165667B19E3779F9)
    n = len(lengths)
    counts = np.maximum(lengths - (SHINGLE - 1), 1)
    out_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=out_offsets[1:])
    out = np.zeros(out_offsets[-1], dtype=np.uint64)
    long_rows = lengths >= SHINGLE
    if long_rows.any():
        # Positions p of every valid shingle, text by text, as one index array.
        starts, cnt = offsets[:-1][long_rows], counts[long_rows]
        within = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        out[np.repeat(out_offsets[:-1][long_rows], cnt) + within] = tri[
            np.repeat(starts, cnt) + within]
    for k in range(1, SHINGLE):  # texts of 1 or 2 words: one shingle, the whole text
        rows = np.flatnonzero(lengths == k)
        value = np.zeros(len(rows), dtype=np.uint64)
        for j in range(k):
            value ^= short[offsets[rows] + j]
        out[out_offsets[rows]] = value
    return out, out_offsets


def minhash_signatures(texts: Sequence[str]) -> np.ndarray:
    """[len(texts), NUM_HASHES] uint32 MinHash signatures of the texts' shingle sets."""
    sig = np.empty((len(texts), NUM_HASHES), dtype=np.uint32)
    for lo in range(0, len(texts), BLOCK):
        values, offsets = _shingle_block(texts[lo: lo + BLOCK])
        starts = offsets[:-1]
        with np.errstate(over="ignore"):
            for k in range(NUM_HASHES):
                permuted = (values * _A[k] + _B[k]) >> _U64(32)
                sig[lo: lo + len(starts), k] = np.minimum.reduceat(permuted, starts)
    return sig


def band_keys(sig: np.ndarray) -> np.ndarray:
    """[rows, BANDS] uint64: one hash of each band's ROWS_PER_BAND minima."""
    keys = np.zeros((len(sig), BANDS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(ROWS_PER_BAND):
            keys = keys * _U64(0x100000001B3) + sig[:, r::ROWS_PER_BAND].astype(np.uint64)
    return keys


class NearDuplicateIndex:
    """Signatures of rows added block by block (with their split), then one report.

    Memory: NUM_HASHES * 4 + BANDS * 8 + 1 bytes a row; texts are fetched by index only
    for the exact check of candidate pairs.
    """

    def __init__(self, split_names: Sequence[str]):
        self.names = list(split_names)
        self._keys: list[np.ndarray] = []
        self._sigs: list[np.ndarray] = []
        self._splits: list[np.ndarray] = []

    def add(self, texts: Sequence[str], splits: np.ndarray) -> None:
        """Add rows (in order) with their split index (position in split_names)."""
        if len(texts):
            sig = minhash_signatures(texts)
            self._sigs.append(sig)
            self._keys.append(band_keys(sig))
            self._splits.append(np.asarray(splits, dtype=np.int8))

    def report(self, threshold: float, text_of: Callable[[int], str],
               keep: np.ndarray | None = None) -> dict[str, Any]:
        """Rows with a near-duplicate (shingle Jaccard >= threshold) in an earlier split.

        A validation row is checked against train, a test row against train and
        validation (the order of split_names). Counting rows, not pairs, keeps the number
        readable when one text has many variants. `keep` (a bool per added row) leaves
        rows out; `text_of(i)` returns the text of added row i.

        Returns:
            {"threshold", "rows": flagged rows, "by_splits": {"test~train": n, ...},
             "examples": up to 5 [split, text, other split, other text, jaccard]}
        """
        sig = np.concatenate(self._sigs) if self._sigs else np.zeros((0, NUM_HASHES), np.uint32)
        keys = np.concatenate(self._keys) if self._keys else np.zeros((0, BANDS), np.uint64)
        split = np.concatenate(self._splits) if self._splits else np.zeros(0, np.int8)
        rows = np.flatnonzero(keep) if keep is not None else np.arange(len(split))
        exact = lru_cache(maxsize=8192)(lambda i: shingles(text_of(i)))
        flagged: dict[tuple[int, int], tuple[int, float]] = {}  # (row, other split) -> partner
        rejected: set[tuple[int, int]] = set()  # pairs already found below the threshold
        for band in range(BANDS):
            for i, other, partners in _band_candidates(rows, keys[rows, band], split[rows],
                                                       sig, threshold, flagged):
                for j in partners:
                    if (i, j) in rejected:
                        continue
                    a, b = exact(i), exact(j)
                    score = len(a & b) / len(a | b)
                    if score >= threshold:
                        flagged[(i, other)] = (j, score)
                        break
                    rejected.add((i, j))
        by_splits: dict[str, int] = {}
        for i, other in flagged:
            key = f"{self.names[split[i]]}~{self.names[other]}"
            by_splits[key] = by_splits.get(key, 0) + 1
        top = sorted(flagged.items(), key=lambda kv: (-kv[1][1], kv[0]))[:MAX_EXAMPLES]
        examples = [[self.names[split[i]], text_of(i), self.names[other], text_of(j),
                     round(score, 3)] for (i, other), (j, score) in top]
        return {"threshold": threshold, "rows": len({i for i, _ in flagged}),
                "by_splits": dict(sorted(by_splits.items())), "examples": examples}


def _band_candidates(rows: np.ndarray, key: np.ndarray, split: np.ndarray, sig: np.ndarray,
                     threshold: float, flagged: dict):
    """Yield (row, earlier split, partner rows best estimate first) for one band."""
    order = np.lexsort((split, key))  # by band key, then split, then input order
    key, split, rows = key[order], split[order], rows[order]
    new_group = np.r_[True, key[1:] != key[:-1]]
    group = np.cumsum(new_group) - 1
    segment = group.astype(np.int64) * 4 + split  # nondecreasing
    min_agree = max(0.0, threshold - SIGNATURE_MARGIN) * NUM_HASHES
    for other in range(int(split.max(initial=0))):
        later = np.flatnonzero(split > other)
        lo = np.searchsorted(segment, segment[later] - split[later] + other, "left")
        hi = np.searchsorted(segment, segment[later] - split[later] + other, "right")
        count = np.minimum(hi - lo, MAX_PARTNERS)
        has = count > 0
        later, lo, count = later[has], lo[has], count[has]
        if not len(later):
            continue
        done = np.array([(int(r), other) in flagged for r in rows[later]], dtype=bool)
        later, lo, count = later[~done], lo[~done], count[~done]
        first = np.repeat(later, count)
        second = np.repeat(lo, count) + np.arange(count.sum()) - np.repeat(
            np.cumsum(count) - count, count)
        a, b = rows[first], rows[second]
        agree = np.zeros(len(a), dtype=np.int16)
        for lo_p in range(0, len(a), 1 << 18):  # bounded temporaries
            sl = slice(lo_p, lo_p + (1 << 18))
            agree[sl] = np.count_nonzero(sig[a[sl]] == sig[b[sl]], axis=1)
        good = agree >= min_agree
        a, b, agree = a[good], b[good], agree[good]
        if not len(a):
            continue
        pick = np.lexsort((-agree, a))  # by row, best estimate first
        a, b = a[pick], b[pick]
        bounds = np.flatnonzero(np.r_[True, a[1:] != a[:-1], True])
        for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            yield int(a[s]), other, b[s: min(e, s + EXACT_TRIES)].tolist()


def cross_split_near_duplicates(texts_by_split: dict[str, list[str]],
                                threshold: float) -> dict[str, Any]:
    """`NearDuplicateIndex.report` for texts held in memory, split by split in order."""
    index = NearDuplicateIndex(list(texts_by_split))
    texts = [t for split_texts in texts_by_split.values() for t in split_texts]
    split_of = np.repeat(np.arange(len(texts_by_split)),
                         [len(v) for v in texts_by_split.values()])
    index.add(texts, split_of)
    return index.report(threshold, texts.__getitem__)
