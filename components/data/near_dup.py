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
  dropped, and the rest are confirmed with the exact shingle Jaccard, best first;
- the exact check is vectorised too: each row's shingles are kept as 64-bit hashes (8
  bytes a shingle), sorted only for rows in a candidate pair when it is checked, and the
  shared ones of many pairs are counted by one binary search over all their elements.
  The first pair of a row at or above the threshold is its partner, exactly as if the
  pairs were tried one by one in that order.
Recall is that of the banding (a pair at Jaccard 0.8 shares a band with p > 0.99); every
reported pair is exact (no false positives; two distinct shingles share a 64-bit hash
with p ~ 2^-64).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from components.data.shingle_sets import intersection_sizes, sort_rows

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
_PAD = _U64(0x5BD1E9955BD1E995)  # the missing words of a text shorter than a shingle
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


def _word_hashes(texts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crc32 of each word, a 64-bit hash of each word, offsets: n + 1) of a block of texts
    (Python strings or an Arrow string array).

    Words are those of `shingles`: Python's lower-casing, then Arrow's whitespace split
    (the same whitespace as str.split, checked by a test). The crc32 feeds the MinHash
    signatures (the same in every run); the 64-bit hash (Python's string hash, only ever
    compared within this process) makes the exact shingle sets.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(texts, pa.Array) and pc.all(pc.string_is_ascii(texts)).as_py() is not False:
        lowered = pc.utf8_lower(texts)  # on ASCII, Arrow's lower-casing is Python's
    else:
        python = texts.to_pylist() if isinstance(texts, pa.Array) else texts
        lowered = [t.lower() for t in python]
        # Arrow's string type holds 2 GiB a block (4 bytes a character at most).
        lowered = pa.array(lowered, type=pa.string() if sum(map(len, lowered)) < 1 << 29
                           else pa.large_string())
    words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lowered))
    offsets = words.offsets.to_numpy().astype(np.int64)
    coded = pc.dictionary_encode(words.values)
    vocab = coded.dictionary.to_pylist()
    crc = np.fromiter((zlib.crc32(w.encode()) for w in vocab), dtype=np.uint64,
                      count=len(vocab))
    wide = np.fromiter(map(hash, vocab), dtype=np.int64, count=len(vocab)).view(np.uint64)
    ids = coded.indices.to_numpy()
    return crc[ids], wide[ids], offsets


def _shingle_values(h: np.ndarray, offsets: np.ndarray, exact: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(one hash per word 3-gram of each text, start of each text's run; n + 1 long).

    A text of fewer than 3 words has one shingle, the whole text: with `exact`, its words
    in order padded to three (never equal to a real 3-gram but with p ~ 2^-64); without,
    the XOR of its word hashes (what the signatures have always used).
    """
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
    mults = (_U64(0x9E3779B97F4A7C15), _U64(0xC2B2AE3D27D4EB4F), _U64(1))
    for k in range(1, SHINGLE):  # texts of 1 or 2 words: one shingle, the whole text
        rows = np.flatnonzero(lengths == k)
        value = np.zeros(len(rows), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(SHINGLE if exact else k):
                word = h[offsets[rows] + j] if j < k else _PAD
                value = value + word * mults[j] if exact else value ^ short[offsets[rows] + j]
        out[out_offsets[rows]] = value
    return out, out_offsets


def minhash_signatures(texts: Sequence[str]) -> np.ndarray:
    """[len(texts), NUM_HASHES] uint32 MinHash signatures of the texts' shingle sets."""
    return _block_signatures_and_sets(texts)[0]


def _block_signatures_and_sets(texts: Any
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(MinHash signatures, each row's shingle hashes (unsorted; see `sort_rows`), their
    offsets)."""
    sig = np.empty((len(texts), NUM_HASHES), dtype=np.uint32)
    sets, sizes = [], []
    for lo in range(0, len(texts), BLOCK):
        crc, wide, word_offsets = _word_hashes(texts[lo: lo + BLOCK])
        values, offsets = _shingle_values(crc, word_offsets, exact=False)
        starts = offsets[:-1]
        with np.errstate(over="ignore"):
            for k in range(NUM_HASHES):
                permuted = (values * _A[k] + _B[k]) >> _U64(32)
                sig[lo: lo + len(starts), k] = np.minimum.reduceat(permuted, starts)
        exact, exact_offsets = _shingle_values(wide, word_offsets, exact=True)
        sets.append(exact)
        sizes.append(np.diff(exact_offsets))
    sizes_all = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(sizes_all, out=offsets[1:])
    return sig, (np.concatenate(sets) if sets else np.zeros(0, np.uint64)), offsets


def band_keys(sig: np.ndarray) -> np.ndarray:
    """[rows, BANDS] uint64: one hash of each band's ROWS_PER_BAND minima."""
    keys = np.zeros((len(sig), BANDS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(ROWS_PER_BAND):
            keys = keys * _U64(0x100000001B3) + sig[:, r::ROWS_PER_BAND].astype(np.uint64)
    return keys


class NearDuplicateIndex:
    """Signatures and shingle sets of rows added block by block (with their split), then
    one report.

    Memory: NUM_HASHES * 4 + BANDS * 8 + 1 bytes a row, plus 8 bytes per distinct shingle
    of the row (a 200-character text has ~30) for the exact check; texts are fetched by
    index only for the examples.
    """

    def __init__(self, split_names: Sequence[str]):
        self.names = list(split_names)
        self._keys: list[np.ndarray] = []
        self._sigs: list[np.ndarray] = []
        self._splits: list[np.ndarray] = []
        self._sets: list[np.ndarray] = []
        self._set_sizes: list[np.ndarray] = []

    def add(self, texts: Any, splits: np.ndarray) -> None:
        """Add rows (in order) with their split index (position in split_names); `texts`
        is a sequence of strings or an Arrow string array."""
        if len(texts):
            sig, sets, offsets = _block_signatures_and_sets(texts)
            self._sigs.append(sig)
            self._keys.append(band_keys(sig))
            self._splits.append(np.asarray(splits, dtype=np.int8))
            self._sets.append(sets)
            self._set_sizes.append(np.diff(offsets))

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
        sig = _joined(self._sigs, np.zeros((0, NUM_HASHES), np.uint32))
        keys = _joined(self._keys, np.zeros((0, BANDS), np.uint64))
        split = _joined(self._splits, np.zeros(0, np.int8))
        values = _joined(self._sets, np.zeros(0, np.uint64))
        offsets = np.r_[0, np.cumsum(_joined(self._set_sizes, np.zeros(0, np.int64)))]
        distinct = np.diff(offsets)  # set by sort_rows for the rows it sorts
        ready = np.zeros(len(split), dtype=bool)  # rows sorted already
        rows = np.flatnonzero(keep) if keep is not None else np.arange(len(split))
        # partner[i, other]: the row of split `other` that row i was found to repeat (-1: none)
        partner = np.full((len(split), max(1, len(self.names) - 1)), -1, dtype=np.int64)
        score = np.zeros(partner.shape)
        for band in range(BANDS):
            for other, a, b in _band_candidates(rows, keys[rows, band], split[rows], sig,
                                                threshold, partner):
                todo = np.unique(np.r_[a, b])
                todo = todo[~ready[todo]]
                sort_rows(values, offsets, todo, distinct)
                ready[todo] = True
                _confirm(values, offsets, distinct, a, b, other, threshold, partner, score)
        i, other = np.nonzero(partner >= 0)
        pairs, counts = np.unique(np.c_[split[i], other], axis=0, return_counts=True)
        by_splits = {f"{self.names[s]}~{self.names[o]}": n for (s, o), n in zip(
            pairs.tolist(), counts.tolist(), strict=True)}
        top = np.lexsort((other, i, -score[i, other]))[:MAX_EXAMPLES]
        examples = [[self.names[split[r]], text_of(r), self.names[o],
                     text_of(int(partner[r, o])), round(float(score[r, o]), 3)]
                    for r, o in zip(i[top].tolist(), other[top].tolist(), strict=True)]
        return {"threshold": threshold, "rows": len(np.unique(i)),
                "by_splits": dict(sorted(by_splits.items())), "examples": examples}


def _joined(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """The parts as one array, kept as the only part so memory is not held twice."""
    if len(parts) > 1:
        parts[:] = [np.concatenate(parts)]
    return parts[0] if parts else empty


def _confirm(values: np.ndarray, offsets: np.ndarray, distinct: np.ndarray, a: np.ndarray,
             b: np.ndarray, other: int, threshold: float, partner: np.ndarray,
             score: np.ndarray) -> None:
    """Exact Jaccard of candidate pairs (a by row, best estimate first): the first pair of
    a row at or above the threshold becomes its partner, as if tried one by one."""
    run_start = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    rank = np.arange(len(a)) - np.repeat(run_start, np.diff(np.r_[run_start, len(a)]))
    for r in range(EXACT_TRIES):
        pick = np.flatnonzero(rank == r)
        pick = pick[partner[a[pick], other] < 0]
        if not len(pick):
            break
        i, j = a[pick], b[pick]
        common = intersection_sizes(values, offsets, i, j)
        union = distinct[i] + distinct[j] - common
        jac = common / union
        hit = jac >= threshold
        partner[i[hit], other], score[i[hit], other] = j[hit], jac[hit]


def _band_candidates(rows: np.ndarray, key: np.ndarray, split: np.ndarray, sig: np.ndarray,
                     threshold: float, partner: np.ndarray
                     ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (earlier split, rows, partners) for one band: pairs sorted by row, best
    estimate first, at most EXACT_TRIES a row; rows that have a partner are left out."""
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
        has = (count > 0) & (partner[rows[later], other] < 0)
        later, lo, count = later[has], lo[has], count[has]
        if not len(later):
            continue
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
        run_start = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
        rank = np.arange(len(a)) - np.repeat(run_start, np.diff(np.r_[run_start, len(a)]))
        tried = rank < EXACT_TRIES
        yield other, a[tried], b[tried]


def cross_split_near_duplicates(texts_by_split: dict[str, list[str]],
                                threshold: float) -> dict[str, Any]:
    """`NearDuplicateIndex.report` for texts held in memory, split by split in order."""
    index = NearDuplicateIndex(list(texts_by_split))
    texts = [t for split_texts in texts_by_split.values() for t in split_texts]
    split_of = np.repeat(np.arange(len(texts_by_split)),
                         [len(v) for v in texts_by_split.values()])
    index.add(texts, split_of)
    return index.report(threshold, texts.__getitem__)
