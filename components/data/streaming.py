"""Validate, quarantine, split and write a labeled text file chunk by chunk.

Pass 1 reads the input once (its md5 from the same read), checks each chunk as it comes
(`check_row` row by row, or `check_columns` on the Arrow columns of CSV and Parquet
chunks, with the same result), stages every row that passed as its final JSON line and
keeps ~40 bytes a row of numbers (text hash, label, split, line) plus its near-duplicate
sketch (MinHash signature and shingle hashes, ~400 bytes for a 200-character text),
computed on a worker thread while the next chunk is checked. Exact duplicates and texts
seen with two labels need the whole file: they are decided on those numbers once the
input is read. Pass 2 streams the staged lines into the split files and merges the
quarantine in input order. Memory grows by ~450 bytes a row, not with the file's bytes.

The outputs are those of reading the whole file at once: same splits, same order, same
quarantine (tests/data/prepare_reference.json holds the figures to match). Texts are
identified by a 64-bit hash of their normalized form within one run (a collision among
10 million distinct texts has p < 3e-6).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from components.config import DataConfig
from components.data.checks import (
    CONFLICTING_LABELS,
    DUPLICATE,
    CheckedChunk,
    _jsonable,
    _quarantine_record,
    check_columns,
    check_rows,
    split_indices,
)
from components.data.chunks import Chunk, ColumnChunk, HashingReader, iter_chunks
from components.data.files import SPLITS, DataValidationError, input_format, md5_file
from components.data.lines import json_line, kept_lines
from components.data.near_dup import NearDuplicateIndex
from components.io import atomic_dir

_STAGED, _RAW, _BAD = ".staged.jsonl", ".staged-raw.jsonl", ".staged-quarantine.jsonl"
_ARROW_CHARS = 1 << 29  # characters of a chunk's texts, 4 bytes at most each: under 2 GiB


def check_size(path: str | Path, cfg: DataConfig) -> None:
    """Refuse a file larger than `data.max_bytes` before reading it.

    Raises:
        DataValidationError: the file is larger than the limit.
    """
    size = Path(path).stat().st_size
    if cfg.max_bytes and size > cfg.max_bytes:
        raise DataValidationError(
            f"{path}: {size:,} bytes is more than data.max_bytes={cfg.max_bytes:,}; raise "
            "data.max_bytes (0 or null: no limit) or split the file. Nothing was written.")


@dataclass
class Scan:
    """Pass 1 of one input: counts, and a few numbers per row that passed `check_row`."""

    rows_in: int = 0
    md5: str | None = None
    bad_rows: list[int] = field(default_factory=list)   # row number (from 0) of each ...
    bad_reasons: list[str] = field(default_factory=list)  # ... row quarantined by check_row
    label_ids: dict[str, int] = field(default_factory=dict)
    cols: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def column(self, name: str, dtype: Any) -> np.ndarray:
        parts = self.cols.get(name)
        return np.concatenate(parts) if parts else np.zeros(0, dtype)


def scan_rows(path: Path, cfg: DataConfig, stage: Path | None = None,
              index: NearDuplicateIndex | None = None) -> Scan:
    """Pass 1: read, check and (when `stage` is a folder) stage the rows of `path`.

    Raises:
        DataValidationError: see `iter_chunks`; more rows than `data.max_rows`.
    """
    scan = Scan()
    pending: list[Future] = []
    hashing = path.suffix.lower() not in (".parquet", ".pq")
    with contextlib.ExitStack() as stack:
        files = ({name: stack.enter_context(open(stage / name, "wb"))
                  for name in (_STAGED, _RAW, _BAD)} if stage else {})
        pool = stack.enter_context(ThreadPoolExecutor(1)) if index is not None else None
        stack.callback(lambda: [f.cancel() for f in pending])
        raw = stack.enter_context(open(path, "rb"))
        reader = HashingReader(raw) if hashing else None
        for chunk in iter_chunks(path, cfg, reader):
            texts, splits = _scan_chunk(scan, chunk, cfg, files)
            if pool is not None and len(texts):
                if len(pending) >= 2:  # at most two chunks' texts wait for signatures
                    pending.pop(0).result()
                pending.append(pool.submit(index.add, texts, splits))
        scan.md5 = reader.hexdigest() if reader is not None else md5_file(path)
        while pending:
            pending.pop(0).result()
    if scan.rows_in == 0:
        raise DataValidationError(f"{path}: no rows")
    return scan


def _scan_chunk(scan: Scan, chunk: Chunk, cfg: DataConfig, files: dict[str, BinaryIO]
                ) -> tuple[list[str], np.ndarray]:
    """Check one chunk, stage what passed; return the staged texts and their splits."""
    if cfg.max_rows and scan.rows_in + len(chunk) > cfg.max_rows:
        raise DataValidationError(
            f"more than data.max_rows={cfg.max_rows:,} rows; raise data.max_rows (0 or "
            "null: no limit) or split the file. Nothing was written.")
    checked = (check_columns(chunk, cfg) if isinstance(chunk, ColumnChunk)
               else check_rows(chunk, cfg))
    first = scan.rows_in
    scan.rows_in += len(chunk)
    passed = checked.reasons == ""
    bad = np.flatnonzero(~passed).tolist()
    scan.bad_rows.extend(first + i for i in bad)
    scan.bad_reasons.extend(checked.reasons[bad].tolist())
    staging = bool(files)
    if staging and bad:
        files[_BAD].write(b"".join(json_line(_quarantine_record(row, reason)) for row, reason
                                   in zip(checked.rows(bad), scan.bad_reasons[-len(bad):],
                                          strict=True)))
    ok = np.flatnonzero(passed)
    if not len(ok):
        return [], np.zeros(0, np.int8)
    pick = ok.tolist()
    norms = [checked.norms[i] for i in pick]
    labels = [checked.labels[i] for i in pick]
    groups = [checked.groups[i] for i in pick] if checked.groups is not None else None
    ids = scan.label_ids
    cols = {"key": _text_keys(norms),
            "label": np.array([ids.setdefault(x, len(ids)) for x in labels], dtype=np.int32),
            "row": first + ok, "line": checked.lines[ok]}
    if groups is not None:
        cols["group"] = _text_keys(groups)
    split = np.zeros(0, np.int8)
    texts: Any = []
    if staging:
        texts = norms
        # Arrow columns in, Arrow texts on (its string type holds up to 2 GiB a chunk)
        if isinstance(chunk, ColumnChunk) and sum(map(len, norms)) < _ARROW_CHARS:
            import pyarrow as pa

            texts = pa.array(norms, type=pa.string())
        staged, sizes = kept_lines(texts, labels, groups)
        files[_STAGED].write(staged)
        split = split_indices(groups if groups is not None else norms, cfg)
        differs = _differs(checked, pick, norms, labels, groups)
        if differs.any():
            raw = checked.raw
            files[_RAW].write(b"".join(json_line([_jsonable(raw[k][pick[i]]) if k in raw else None
                                              for k in ("text", "label", "group")])
                                       for i in np.flatnonzero(differs).tolist()))
        cols.update(size=sizes, split=split, raw=differs)
    for name, values in cols.items():
        scan.cols.setdefault(name, []).append(values.astype(_DTYPES[name], copy=False))
    return texts, split


def _differs(checked: CheckedChunk, pick: list[int], norms: list[str], labels: list[str],
             groups: list[str] | None) -> np.ndarray:
    """Per staged row: was its text, label or group changed by the checks (normalized)?"""
    raw = checked.raw
    out = np.fromiter((raw["text"][i] != t or raw["label"][i] != lab for i, t, lab in zip(
        pick, norms, labels, strict=True)), dtype=bool, count=len(pick))
    if groups is not None:
        out |= np.fromiter((raw["group"][i] != g for i, g in zip(pick, groups, strict=True)),
                           dtype=bool, count=len(pick))
    return out


_DTYPES = {"key": np.uint64, "label": np.int32, "split": np.int8, "row": np.int64,
           "line": np.int64, "raw": bool, "size": np.int64, "group": np.uint64}


def _text_keys(texts: list[str]) -> np.ndarray:
    # Only compared within this process, so Python's own 64-bit string hash will do.
    return np.fromiter(map(hash, texts), dtype=np.int64, count=len(texts)).view(np.uint64)


def first_and_unambiguous(keys: np.ndarray, labels: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(row is the first of its text, text was seen with more than one label) per row."""
    order = np.lexsort((labels, keys))  # stable: input order within equal (key, label)
    k, lab = keys[order], labels[order]
    new_key = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    new_pair = new_key | np.r_[True, lab[1:] != lab[:-1]] if len(k) else new_key
    group = np.cumsum(new_key) - 1
    conflict_sorted = np.bincount(group, weights=new_pair)[group] > 1
    first, conflict = np.empty_like(new_key), np.empty_like(new_key)
    first[order], conflict[order] = new_key, conflict_sorted
    return first, conflict


@dataclass
class Decided:
    """Which checked rows are kept, and the quarantine reasons in input order."""

    keep: np.ndarray
    dropped_reason: np.ndarray   # per checked row: "" kept, else its reason
    reasons: dict[str, int]
    labels: list[str]
    n_bad: int


def decide(scan: Scan, path: Path, cfg: DataConfig) -> Decided:
    """Duplicates and conflicting labels, then the checks that need the whole file.

    Raises:
        DataValidationError: too many bad rows, or fewer than two classes.
    """
    keys, labels = scan.column("key", np.uint64), scan.column("label", np.int32)
    first, conflict = first_and_unambiguous(keys, labels)
    keep = first & ~conflict
    dropped = np.where(conflict, CONFLICTING_LABELS, np.where(keep, "", DUPLICATE))
    rows = scan.column("row", np.int64)
    order = np.argsort(np.r_[np.asarray(scan.bad_rows, dtype=np.int64), rows[~keep]],
                       kind="stable")
    in_order = np.r_[np.asarray(scan.bad_reasons, dtype=object), dropped[~keep]][order]
    reasons = dict(Counter(in_order.tolist()).most_common())
    n_bad = len(in_order)
    names = {i: name for name, i in scan.label_ids.items()}
    present = sorted({names[i] for i in np.unique(labels[keep]).tolist()})
    bad_fraction = n_bad / scan.rows_in
    if bad_fraction > cfg.max_bad_fraction:
        raise DataValidationError(
            f"{path}: {n_bad} of {scan.rows_in} rows are bad "
            f"({bad_fraction:.1%} > data.max_bad_fraction={cfg.max_bad_fraction:.1%}); "
            f"reasons: {reasons}. Nothing was written.")
    if len(present) < 2:
        raise DataValidationError(
            f"{path}: need at least two classes among the valid rows, found {present}")
    return Decided(keep, dropped, reasons, list(cfg.labels) or present, n_bad)


def write_splits(stage: Path, out: Path, scan: Scan, decided: Decided) -> None:
    """Pass 2: staged lines into the split files, the quarantine merged in input order."""
    split = scan.column("split", np.int8)
    rows, lines = scan.column("row", np.int64), scan.column("line", np.int64)
    differs = scan.column("raw", bool)
    bad_rows = scan.bad_rows
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(open(out / f"{s}.jsonl", "wb")) for s in SPLITS]
        staged, raw, bad, q = (stack.enter_context(open(p, mode)) for p, mode in (
            (stage / _STAGED, "rb"), (stage / _RAW, "rb"), (stage / _BAD, "rb"),
            (out / "quarantine.jsonl", "wb")))
        b = 0
        for i, line in enumerate(staged):
            while b < len(bad_rows) and bad_rows[b] < rows[i]:
                q.write(bad.readline())
                b += 1
            raw_values = json.loads(raw.readline()) if differs[i] else None
            if decided.keep[i]:
                outs[split[i]].write(line)
                continue
            kept = json.loads(line)
            text, label, group = raw_values or (kept["text"], kept["label"],
                                                kept.get("group"))
            record = {"reason": str(decided.dropped_reason[i]), "line": int(lines[i]),
                      "text": text, "label": label}
            if "group" in kept:
                record["group"] = group
            q.write(json_line(record))
        q.write(bad.read())


@contextlib.contextmanager
def staged_texts(stage: Path, scan: Scan) -> Iterator[Callable[[int], str]]:
    """Yield text_of(i): checked row i's text, read from the staged file on demand."""
    starts = np.r_[0, np.cumsum(scan.column("size", np.int64))]
    with open(stage / _STAGED, "rb") as fh, (
            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if starts[-1]
            else contextlib.nullcontext(b"")) as view:
        yield lambda i: json.loads(view[starts[i]: starts[i + 1]])["text"]


@dataclass
class DatasetSummary:
    """An input file read and validated, nothing written."""

    rows_in: int
    rows_ok: int
    reasons: dict[str, int]
    labels: list[str]


def check_dataset(input_path: str | Path, cfg: DataConfig) -> DatasetSummary:
    """Read and validate the texts + labels of `input_path` without writing anything.

    Raises:
        DataValidationError: missing file or columns, unsupported format, larger than
            `data.max_bytes` / `data.max_rows`, no usable rows, fewer than two classes, or
            a quarantined fraction above `data.max_bad_fraction`.
    """
    path = Path(input_path)
    input_format(path)
    check_size(path, cfg)
    scan = scan_rows(path, cfg)
    decided = decide(scan, path, cfg)
    return DatasetSummary(scan.rows_in, int(decided.keep.sum()), decided.reasons,
                          decided.labels)


def prepare_dataset(input_path: str | Path, out_dir: str | Path, cfg: DataConfig
                    ) -> dict[str, Any]:
    """Validate `input_path`, quarantine bad rows, split, and write the prepared folder.

    Everything is written into a temp folder that replaces `out_dir` in one rename, so a
    failure leaves any earlier prepared folder as it was.

    Returns:
        The report (also written as report.json).

    Raises:
        DataValidationError: see `check_dataset`; also an empty train split.
    """
    path = Path(input_path)
    input_format(path)
    check_size(path, cfg)
    index = NearDuplicateIndex(SPLITS)
    with atomic_dir(out_dir) as tmp:
        scan = scan_rows(path, cfg, tmp, index)
        decided = decide(scan, path, cfg)
        split = scan.column("split", np.int8)
        kept_split = split[decided.keep]
        sizes = {s: int((kept_split == i).sum()) for i, s in enumerate(SPLITS)}
        if not sizes["train"]:
            raise DataValidationError(f"{path}: the train split is empty")
        write_splits(tmp, tmp, scan, decided)
        with staged_texts(tmp, scan) as text_of:
            near = index.report(cfg.near_duplicate_jaccard, text_of, decided.keep)
        report = _report(path, scan, decided, cfg, sizes, near)
        for name in (_STAGED, _RAW, _BAD):
            os.unlink(tmp / name)
        (tmp / "labels.json").write_text(json.dumps({"labels": decided.labels}, indent=2)
                                         + "\n")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _report(path: Path, scan: Scan, decided: Decided, cfg: DataConfig,
            sizes: dict[str, int], near: dict[str, Any]) -> dict[str, Any]:
    keep = decided.keep
    split, labels = scan.column("split", np.int8)[keep], scan.column("label", np.int32)[keep]
    names = {i: name for name, i in scan.label_ids.items()}
    class_counts = {}
    for i, s in enumerate(SPLITS):
        ids, counts = np.unique(labels[split == i], return_counts=True)
        class_counts[s] = dict(sorted((names[a], int(c)) for a, c in zip(
            ids.tolist(), counts.tolist(), strict=True)))
    groups = None
    if cfg.group_column:
        group = scan.column("group", np.uint64)[keep]
        groups = {s: len(np.unique(group[split == i])) for i, s in enumerate(SPLITS)}
    return {
        "input": path.name, "input_md5": scan.md5, "rows_in": scan.rows_in,
        "rows_ok": int(keep.sum()), "quarantined": decided.reasons,
        "bad_fraction": round(decided.n_bad / scan.rows_in, 6), "labels": decided.labels,
        "split_sizes": sizes, "class_counts": class_counts, "group_column": cfg.group_column,
        "groups": groups, "near_duplicates": near,
    }
