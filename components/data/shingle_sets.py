"""Exact Jaccard of many pairs of texts at once, from each text's shingle hashes.

Each row's shingles are one run of 64-bit hashes in a flat array (`offsets[row]` to
`offsets[row + 1]`). `sort_rows` sorts the runs of the rows about to be compared, in
place; `intersection_sizes` then counts the hashes two runs share, for many pairs in one
batched binary search. Jaccard = shared / (distinct a + distinct b - shared).
"""

from __future__ import annotations

import numpy as np

ROWS_AT_ONCE = 32768  # rows sorted together: their index fits the 15 bits the sort key leaves
PAIR_BLOCK = 1 << 20  # hashes looked up at once: bounds the temporaries
_U64 = np.uint64


def sort_rows(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
              distinct: np.ndarray) -> None:
    """Sort the shingle hashes of `rows` in place, each row within its own run, and set
    distinct[row] to how many of them differ (a text can repeat a 3-gram).

    Done only for rows in a candidate pair, when the pair is checked: most rows of most
    files never are.
    """
    for lo in range(0, len(rows), ROWS_AT_ONCE):
        part = rows[lo: lo + ROWS_AT_ONCE]
        size = offsets[part + 1] - offsets[part]
        local = np.repeat(np.arange(len(part), dtype=np.uint64), size)
        at = np.repeat(offsets[part], size) + np.arange(size.sum()) - np.repeat(
            np.cumsum(size) - size, size)
        v = values[at]
        # One sort of (row, top 49 bits): a plain uint64 sort is several times faster than
        # a two-key lexsort; the rare rows where two shingles share a key are re-sorted.
        key = (local << _U64(49)) | (v >> _U64(15))
        order = np.argsort(key)
        v, key = v[order], key[order]
        tie = np.flatnonzero((key[1:] == key[:-1]) & (v[1:] != v[:-1]))
        starts = np.r_[0, np.cumsum(size)]
        for r in np.unique(local[tie]).tolist():
            v[starts[r]: starts[r + 1]].sort()
        values[at] = v
        fresh = np.r_[True, (v[1:] != v[:-1]) | (local[1:] != local[:-1])]
        distinct[part] = np.bincount(local[fresh].astype(np.int64), minlength=len(part))


def intersection_sizes(values: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray
                       ) -> np.ndarray:
    """|set a[k] ∩ set b[k]| for every pair k of rows whose sets are sorted runs of values
    (`sort_rows`; a value repeated in a run counts once).

    Every element of the smaller set is looked up in the other by a binary search run on
    all elements at once (numpy), in slices that bound the temporaries.
    """
    small = (offsets[a + 1] - offsets[a]) <= (offsets[b + 1] - offsets[b])
    a, b = np.where(small, a, b), np.where(small, b, a)
    out = np.zeros(len(a), dtype=np.int64)
    size = offsets[a + 1] - offsets[a]
    lo_pair = 0
    while lo_pair < len(a):  # pairs in slices of about PAIR_BLOCK queries
        ends = np.cumsum(size[lo_pair:])
        hi_pair = lo_pair + max(1, int(np.searchsorted(ends, PAIR_BLOCK, "right")))
        out[lo_pair:hi_pair] = _intersect_slice(values, offsets, a[lo_pair:hi_pair],
                                                b[lo_pair:hi_pair])
        lo_pair = hi_pair
    return out


def _intersect_slice(values: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray
                     ) -> np.ndarray:
    size = offsets[a + 1] - offsets[a]
    pair = np.repeat(np.arange(len(a)), size)
    at = np.repeat(offsets[a], size) + np.arange(len(pair)) - np.repeat(np.cumsum(size) - size,
                                                                      size)
    query = values[at]
    repeat = np.zeros(len(at), dtype=bool)  # a value the query run held just before
    later = at != offsets[a][pair]
    repeat[later] = values[at[later] - 1] == query[later]
    lo, end = offsets[b][pair], offsets[b + 1][pair]
    hi = end.copy()
    active = np.flatnonzero(lo < hi)
    while len(active):  # lo: first position in [lo, end) whose value is >= the query
        mid = (lo[active] + hi[active]) >> 1
        right = values[mid] < query[active]
        lo[active] = np.where(right, mid + 1, lo[active])
        hi[active] = np.where(right, hi[active], mid)
        active = active[lo[active] < hi[active]]
    found = (lo < end) & ~repeat
    found[found] = values[lo[found]] == query[found]
    return np.bincount(pair, weights=found, minlength=len(a)).astype(np.int64)
